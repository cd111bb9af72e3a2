"""Coverage of the 95 % intervals of J(pi) and V(s) against ground truth (issue 12).

Many independent datasets per setting; for each, `tdntk.experiments.evaluate.evaluate`
(the TD estimator at t = inf, evaluate's defaults otherwise) gives the policy value J
and per-state values with their intervals, and they are checked against the truth:

* ``frozenlake``: FrozenLake-v1 (4x4, slippery: a stochastic tabular MDP), gamma 0.95.
  Target: the optimal policy (policy iteration on ``env.unwrapped.P``); behaviour:
  the target with probability 0.5, else a uniform action. Truth: dynamic programming
  on ``env.unwrapped.P`` (J = V(0), every episode starts in state 0); V at the 11
  non-terminal states.
* ``cartpole-on``: CartPole-v1, gamma 0.99; behaviour = target = the noisy linear
  policy of `tdntk.experiments.cartpole_policy` (epsilon 0.2, trained to a mean return
  of about 40, so a dataset of 500 transitions holds ~12 episodes); the target's
  probabilities weight both next actions (expected SARSA).
* ``cartpole-off``: the same data, target = the same linear policy with epsilon 0.05.
  Truth for CartPole: Monte Carlo (`tdntk.envs.cartpole.monte_carlo_returns`, no time
  limit): J from 20,000 fresh initial states, V(s) at 20 random data states per dataset
  with 400 rollouts each.

Methods (the same point estimate, different intervals):

* ``ensemble``: mean +- 1.96 x the ensemble std (what tdntk reported before);
* ``jackknife``: evaluate's default (ensemble variance + jackknife over groups of
  episodes, t quantile with G - 1 degrees of freedom);
* ``bootstrap``: ensemble variance + the variance over B bootstrap resamples of the
  episodes (weights = multiplicities, closed-form refits), normal quantile.

Reported: coverage (fraction of datasets / states whose interval holds the truth, with
its binomial standard error), mean interval width, RMSE and mean error of the estimate.
evaluate runs with time="discrete" and tau = 1: the t = inf fixed point (mean and
covariance) is the same as in continuous time, and checking its stability needs the
eigenvalues of an n x n matrix instead of a 2n x 2n one.

Run: .venv/bin/python benchmarks/bench_coverage.py [--datasets 100] [--transitions N]
     [--settings frozenlake cartpole-on cartpole-off] [--bootstrap 64] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import gymnasium
import numpy as np

from tdntk.datasets import Features, collect, to_transitions
from tdntk.datasets.features import next_inputs
from tdntk.envs.cartpole import initial_states, monte_carlo_returns
from tdntk.experiments.cartpole_policy import LinearPolicy, train_cartpole_policy
from tdntk.experiments.evaluate import EvaluateConfig, evaluate, initial_inputs
from tdntk.policy_value import FixedPointResampler

LEVEL_Z = 1.959963984540054
RETURN = 40.0  # mean return the CartPole policy is trained to (short episodes: many per dataset)
TRANSITIONS = {"frozenlake": 1000, "cartpole-on": 500, "cartpole-off": 500}


# ---------------------------------------------------------------------- settings
class _TabularPolicy:
    """A policy over a Discrete observation space from a (S, A) probability table."""

    def __init__(self, probs, seed=0):
        self.probs = np.asarray(probs, dtype=np.float64)
        self.rng = np.random.default_rng(seed)

    def action_probs(self, obs):
        return self.probs[int(np.argmax(obs))]

    def __call__(self, obs):
        return int(self.rng.choice(self.probs.shape[1], p=self.action_probs(obs)))


def _lake_model(env):
    """(R (S A,), T (S A, S) to non-terminal continuations, terminal states)."""
    p = env.unwrapped.P
    n_s, n_a = len(p), len(p[0])
    reward, trans = np.zeros(n_s * n_a), np.zeros((n_s * n_a, n_s))
    terminal = set()
    for s in range(n_s):
        for a in range(n_a):
            for prob, s2, r, done in p[s][a]:
                reward[s * n_a + a] += prob * r
                if done:
                    terminal.add(s2)
                else:
                    trans[s * n_a + a, s2] += prob
    return reward, trans, terminal


def _lake_q(reward, trans, policy, gamma):
    """Q (S, A) of a policy table (S, A) by a linear solve of the Bellman equations."""
    n_s, n_a = policy.shape
    mix = np.einsum("ks,sa->ksa", trans, policy).reshape(n_s * n_a, n_s * n_a)
    return np.linalg.solve(np.eye(n_s * n_a) - gamma * mix, reward).reshape(n_s, n_a)


def frozenlake_setting(gamma=0.95, epsilon=0.5):
    env = gymnasium.make("FrozenLake-v1")
    reward, trans, terminal = _lake_model(env)
    n_s, n_a = 16, 4
    table = np.full((n_s, n_a), 1.0 / n_a)
    for _ in range(100):  # policy iteration
        greedy = np.eye(n_a)[np.argmax(_lake_q(reward, trans, table, gamma), axis=1)]
        if np.array_equal(greedy, table):
            break
        table = greedy
    q = _lake_q(reward, trans, table, gamma)
    v = np.sum(table * q, axis=1)
    states = np.array([s for s in range(n_s) if s not in terminal])
    target = _TabularPolicy(table)
    return {
        "name": "frozenlake",
        "gamma": gamma,
        "make_data": lambda seed, n: collect(
            env, _TabularPolicy((1 - epsilon) * table + epsilon / n_a, seed), n, seed=seed
        ),
        "target": target,
        "states": lambda data, seed: np.eye(n_s)[states],
        "true_j": float(v[0]),
        "true_v": lambda data, states_, seed: v[np.argmax(states_, axis=1)],
        "description": f"FrozenLake-v1 slippery, gamma {gamma}, optimal target, "
        f"behaviour {1 - epsilon:g} target + {epsilon:g} uniform; truth by DP",
    }


def cartpole_setting(target_epsilon: float, gamma=0.99, per_dataset=20, rollouts=400):
    behaviour = train_cartpole_policy(seed=0, epsilon=0.2, target_return=RETURN).policy
    target = LinearPolicy(behaviour.weights, behaviour.bias, target_epsilon)
    starts = initial_states(20_000, seed=99)
    truth = monte_carlo_returns(target, starts, gamma=gamma, horizon=3000, seed=5)
    name = "cartpole-on" if target_epsilon == behaviour.epsilon else "cartpole-off"

    def pick(data, seed):
        rng = np.random.default_rng(500 + seed)
        return data.observations[np.sort(rng.choice(data.n, per_dataset, replace=False))]

    def true_v(data, states_, seed):
        mc = monte_carlo_returns(
            target, states_, gamma=gamma, rollouts=rollouts, horizon=3000, seed=7 + seed
        )
        return mc.mean

    return {
        "name": name,
        "gamma": gamma,
        "make_data": lambda seed, n: collect("CartPole-v1", behaviour.reseeded(seed), n, seed=seed),
        "target": target,
        "states": pick,
        "true_j": float(truth.mean.mean()),
        "true_j_se": float(truth.mean.std() / np.sqrt(truth.mean.size)),
        "true_v": true_v,
        "description": f"CartPole-v1, gamma {gamma}, behaviour linear eps 0.2, target eps "
        f"{target_epsilon:g}; truth by Monte Carlo ({rollouts} rollouts per state)",
    }


# ---------------------------------------------------------------------- one dataset
def _bootstrap(cfg, data, target, states, resamples, seed):
    """Bootstrap over episodes with closed-form refits: (J (B,), V (B, m))."""
    obs_space, act_space = data.observation_space, data.action_space
    features = Features.from_spaces(obs_space, act_space, standardize=data)
    tr = to_transitions(data, features, cfg.gamma, target, act_space)
    x, w = next_inputs(states, features, policy=target, action_space=act_space)
    x0, w0, index, episode, _ = initial_inputs(data, tr, features, target, act_space)
    m, k, d = x.shape
    u, k0, _ = x0.shape
    res = FixedPointResampler(cfg.net, tr, np.concatenate([x.reshape(-1, d), x0.reshape(-1, d)]))
    _, ep_of_transition = np.unique(data.episode_ids, return_inverse=True)
    num = int(ep_of_transition.max()) + 1
    rng = np.random.default_rng(seed)
    j, v = np.empty(resamples), np.empty((resamples, m))
    for b in range(resamples):
        counts = rng.multinomial(num, np.full(num, 1.0 / num)).astype(np.float64)
        q = res.predict(counts[ep_of_transition.reshape(-1)])
        v[b] = np.einsum("ik,ik->i", w, q[: m * k].reshape(m, k))
        v0 = np.einsum("ik,ik->i", w0, q[m * k :].reshape(u, k0))
        j[b] = np.sum(counts[episode] * v0[index]) / counts[episode].sum()
    ok = np.isfinite(j) & np.all(np.isfinite(v), axis=1)
    return j[ok], v[ok]


def run_dataset(setting, seed, n, resamples):
    data = setting["make_data"](seed, n)
    cfg = EvaluateConfig(gamma=setting["gamma"], time="discrete")
    states = setting["states"](data, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        res = evaluate(data, cfg, setting["target"], states)
        wall = time.perf_counter() - start
    pv = res.policy_value
    out = {
        "seed": seed,
        "episodes": int(data.num_episodes),
        "groups": int(pv.dof + 1) if np.isfinite(pv.dof) else 1,
        "wall_s": wall,
        "j": pv.mean,
        "j_ens": pv.ensemble_std,
        "j_lo": pv.interval_95[0],
        "j_hi": pv.interval_95[1],
        "v": res.value_mean.tolist(),
        "v_ens": res.value_std.tolist(),
        "v_lo": res.lower.tolist(),
        "v_hi": res.upper.tolist(),
        "v_true": np.asarray(setting["true_v"](data, states, seed)).tolist(),
    }
    if resamples:
        bj, bv = _bootstrap(cfg, data, setting["target"], states, resamples, 10_000 + seed)
        out["j_boot_sd"] = float(bj.std(ddof=1))
        out["v_boot_sd"] = bv.std(axis=0, ddof=1).tolist()
    return out


# ---------------------------------------------------------------------- summary
def _score(est, lo, hi, truth):
    est, lo, hi, truth = (np.asarray(a, dtype=np.float64) for a in (est, lo, hi, truth))
    hit = (lo <= truth) & (truth <= hi)
    p = float(hit.mean())
    rmse = float(np.sqrt(np.mean((est - truth) ** 2)))
    return {
        "coverage": p,
        "coverage_se": float(np.sqrt(p * (1 - p) / hit.size)),
        "width": float(np.mean(hi - lo)),
        "rmse": rmse,
        # against an oracle interval +- 1.96 RMSE: how much wider than the error requires
        "relative_width": float(np.mean(hi - lo) / (2 * LEVEL_Z * rmse)),
        "mean_error": float(np.mean(est - truth)),
        "points": int(hit.size),
    }


def summarise(setting, rows) -> list[dict]:
    """Scores over the datasets with an estimate (TD can diverge on a dataset: evaluate then
    gives NaN and says so; those are counted in `diverged`)."""
    out = []
    diverged = sum(not np.isfinite(r["j"]) for r in rows)
    rows = [r for r in rows if np.isfinite(r["j"]) and np.all(np.isfinite(r["v"]))]
    truth_j = np.full(len(rows), setting["true_j"])
    for quantity, key, truth in (("J", "j", truth_j), ("V(s)", "v", None)):

        def col(name):  # one value (J) or an array (V) per dataset, stacked
            return np.hstack([r[name] for r in rows])

        est, ens = col(key), col(f"{key}_ens")
        truth = col("v_true") if truth is None else truth
        methods = {
            "ensemble": (est - LEVEL_Z * ens, est + LEVEL_Z * ens),
            "jackknife": (col(f"{key}_lo"), col(f"{key}_hi")),
        }
        if f"{key}_boot_sd" in rows[0]:
            sd = np.hypot(ens, col(f"{key}_boot_sd"))
            methods["bootstrap"] = (est - LEVEL_Z * sd, est + LEVEL_Z * sd)
        for name, (lo, hi) in methods.items():
            out.append({"setting": setting["name"], "quantity": quantity, "method": name,
                        "diverged": diverged} | _score(est, lo, hi, truth))  # fmt: skip
    return out


def markdown(summary: list[dict]) -> str:
    lines = [
        "| setting | quantity | method | coverage of 95 % intervals | mean width | width / "
        "(2 x 1.96 x RMSE) | RMSE | mean error | points (datasets where TD diverged) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['setting']} | {s['quantity']} | {s['method']} | {s['coverage']:.3f} ± "
            f"{s['coverage_se']:.3f} | {s['width']:.4g} | {s['relative_width']:.2f} | "
            f"{s['rmse']:.4g} | {s['mean_error']:+.3g} | {s['points']} ({s['diverged']}) |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=100)
    parser.add_argument(
        "--transitions",
        type=int,
        default=None,
        help=f"transitions per dataset (default per setting: {TRANSITIONS})",
    )
    parser.add_argument("--bootstrap", type=int, default=64, help="resamples (0: none)")
    parser.add_argument(
        "--settings", nargs="+", default=["frozenlake", "cartpole-on", "cartpole-off"]
    )
    parser.add_argument("--out", default=None, help="write rows and summary as JSON")
    args = parser.parse_args()
    factories = {
        "frozenlake": frozenlake_setting,
        "cartpole-on": lambda: cartpole_setting(0.2),
        "cartpole-off": lambda: cartpole_setting(0.05),
    }
    report, summary = {}, []
    start = time.perf_counter()
    for name in args.settings:
        setting = factories[name]()
        clock = time.perf_counter()
        rows = []
        for seed in range(args.datasets):
            n = args.transitions or TRANSITIONS[name]
            rows.append(run_dataset(setting, seed, n, args.bootstrap))
            if (seed + 1) % 10 == 0:
                print(f"[{name}] {seed + 1}/{args.datasets} datasets, "
                      f"{time.perf_counter() - clock:.0f} s", flush=True)  # fmt: skip
        part = summarise(setting, rows)
        summary.extend(part)
        report[name] = {
            "description": setting["description"],
            "transitions": args.transitions or TRANSITIONS[name],
            "true_j": setting["true_j"],
            "true_j_se": setting.get("true_j_se", 0.0),
            "episodes_mean": float(np.mean([r["episodes"] for r in rows])),
            "diverged": int(sum(not np.isfinite(r["j"]) for r in rows)),
            "groups_mean": float(np.mean([r["groups"] for r in rows])),
            "evaluate_wall_s_mean": float(np.mean([r["wall_s"] for r in rows])),
            "wall_s": time.perf_counter() - clock,
            "rows": rows,
        }
        print(f"\n{setting['description']}, {report[name]['transitions']} transitions per "
              f"dataset: true J = {setting['true_j']:.4g}; "
              f"{report[name]['episodes_mean']:.1f} episodes per dataset; evaluate "
              f"{report[name]['evaluate_wall_s_mean']:.2f} s per dataset")  # fmt: skip
        print(markdown(part), flush=True)
    print(f"\nall settings ({args.datasets} datasets each, "
          f"{time.perf_counter() - start:.0f} s):\n")  # fmt: skip
    print(markdown(summary))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "summary": summary, "settings": report}, f)


if __name__ == "__main__":
    main()
