"""The policy value J(pi), its intervals, `compare`, and the feasibility flags (issue 12).

Independent routes: the covariance's quadratic form computed from `TDNTK.predict`
directly (and by blocks); `TDNTK` rebuilt on subsets and duplicated transitions
against the closed-form refits; textbook formulas for one-step episodes (the
sample mean, its delete-one jackknife = s / sqrt(E), the Student-t interval);
extreme reward sequences for the feasible range.
"""

from __future__ import annotations

import csv
import json

import gymnasium
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_problem
from scipy import stats

import tdntk.experiments.evaluate as ev
from tdntk import MLP, TDNTK, Schedule, SoftTarget, Transitions
from tdntk.cli import main
from tdntk.datasets import Features, OfflineData, collect, save_npz, to_transitions
from tdntk.experiments.compare import compare, parse_policies
from tdntk.experiments.evaluate import EvaluateConfig, evaluate, initial_inputs
from tdntk.policy_value import FixedPointResampler, feasible_range, jackknife_std

NET = MLP(depth=2)


def _td_model(data: Transitions):
    base = TDNTK(NET, data, Schedule(1.0, SoftTarget(1.0)))
    return base.with_schedule(Schedule(0.5 * base.critical_learning_rate, SoftTarget(1.0)))


# ---------------------------------------------------------------------- closed-form refits
def test_refits_equal_tdntk_on_subsets_and_duplicates():
    """Weights 1: TDNTK's t = inf mean; weights 0: TDNTK on the kept transitions; integer
    weights: TDNTK on duplicated transitions (a bootstrap resample). Tolerance 1e-9:
    round-off of a 24 x 24 solve vs the eigenbasis route of TDNTK."""
    data, x_test = make_problem(seed=3, n=24, k=2, m=7)
    res = FixedPointResampler(NET, data, x_test)
    np.testing.assert_allclose(res.predict(), _td_model(data).predict(x_test, np.inf).mean[0],
                               rtol=0, atol=1e-9)  # fmt: skip
    keep = np.ones(data.n)
    keep[[1, 5, 6, 17]] = 0
    subset = _td_model(data.subset(np.flatnonzero(keep))).predict(x_test, np.inf).mean[0]
    np.testing.assert_allclose(res.predict(keep), subset, rtol=0, atol=1e-9)
    counts = np.random.default_rng(0).multinomial(data.n, np.full(data.n, 1 / data.n))
    dup = data.subset(np.repeat(np.arange(data.n), counts))
    np.testing.assert_allclose(res.predict(counts.astype(float)),
                               _td_model(dup).predict(x_test, np.inf).mean[0],
                               rtol=0, atol=1e-9)  # fmt: skip


# ---------------------------------------------------------------------- J and its std
def _cartpole(n=90, seed=4):
    return collect("CartPole-v1", None, n, seed=seed)


class _Lean:
    """A stochastic CartPole policy (probabilities from the pole angle), batched."""

    batched = True

    def action_probs(self, obs):
        obs = np.atleast_2d(obs)
        p = 1.0 / (1.0 + np.exp(-8.0 * (obs[:, 2] + 0.5 * obs[:, 3])))
        return np.stack([1 - p, p], axis=1)

    def __call__(self, obs):
        return (self.action_probs(obs)[:, 1] > 0.5).astype(int)


def test_policy_value_std_is_the_quadratic_form_of_the_covariance(monkeypatch):
    data = _cartpole()
    starts = np.random.default_rng(1).uniform(-0.05, 0.05, (12, 4))
    cfg = EvaluateConfig(gamma=0.9, interval="ensemble")
    result = evaluate(data, cfg, _Lean(), states=starts[:3], initial_states=starts)
    pv = result.policy_value
    # independent: TDNTK on the same transitions, one full covariance over all 12 x 2 inputs
    features = Features.from_spaces(data.observation_space, data.action_space, standardize=data)
    tr = to_transitions(data, features, 0.9, _Lean(), data.action_space)
    x = features.encode_all_actions(starts)  # (12, 2, d)
    w = _Lean().action_probs(starts) / len(starts)
    pred = _td_model(tr).predict(x.reshape(-1, x.shape[-1]), np.inf, full_cov=True)
    w = w.reshape(-1)
    np.testing.assert_allclose(pv.mean, w @ pred.mean[0], rtol=1e-9)
    np.testing.assert_allclose(pv.ensemble_std, np.sqrt(w @ pred.cov[0] @ w), rtol=1e-6)
    per_state = np.sqrt(np.einsum("ik,ikl,il->i", w.reshape(12, 2) * 12,
                                  pred.cov[0].reshape(12, 2, 12, 2)[np.arange(12), :,
                                                                    np.arange(12), :],
                                  w.reshape(12, 2) * 12))  # fmt: skip
    # not the average of per-state stds: the states' Q's are correlated
    assert abs(pv.ensemble_std - per_state.mean()) > 0.05 * pv.ensemble_std
    assert pv.sampling_std == 0 and pv.std == pv.ensemble_std
    lo, hi = pv.interval_95
    np.testing.assert_allclose([lo, hi], pv.mean + np.array([-1, 1]) * 1.959963985 * pv.std)
    # the blocked route (pairs of blocks of inputs) agrees with the one full covariance
    monkeypatch.setattr(ev, "_FULL_COV_INPUTS", 6)
    blocked = evaluate(data, cfg, _Lean(), states=starts[:3], initial_states=starts)
    np.testing.assert_allclose(blocked.policy_value.ensemble_std, pv.ensemble_std, rtol=1e-8)


def _bandit(rewards_by_arm, episodes_arm, obs=0.3):
    """One-step episodes from one state: episode e pulls arm episodes_arm[e] and ends."""
    arms = np.asarray(episodes_arm)
    n = arms.size
    s = np.full((n, 1), obs)
    return OfflineData(
        s, arms, np.asarray(rewards_by_arm, dtype=float), s, np.ones(n, bool), np.zeros(n, bool),
        next_actions=np.zeros(n, int), observation_space=gymnasium.spaces.Box(-1, 1, (1,)),
        action_space=gymnasium.spaces.Discrete(2),
    )  # fmt: skip


def _arm(a):
    def policy(obs):
        return a

    return policy


def test_jackknife_on_one_step_episodes_is_the_student_t_interval():
    """One-step episodes from one state: J of 'always arm 0' is the mean reward of the
    arm-0 episodes, whose sampling distribution is known: with normal rewards the
    Student-t interval ybar +- t_{E-1} s / sqrt(E) covers with probability exactly 0.95.
    The delete-one jackknife of a mean is s / sqrt(E); 20 groups of 2 episodes each
    (40 episodes) give the grouped jackknife, recomputed here by hand."""
    rng = np.random.default_rng(7)
    y = 1.0 + rng.normal(size=12)
    data = _bandit(y, np.zeros(12, int))
    pv = evaluate(data, EvaluateConfig(gamma=0.9), _arm(0)).policy_value
    se = y.std(ddof=1) / np.sqrt(y.size)
    lo, hi = stats.t.interval(0.95, y.size - 1, loc=y.mean(), scale=se)
    assert pv.dof == 11
    np.testing.assert_allclose(pv.mean, y.mean(), rtol=1e-9)
    np.testing.assert_allclose(pv.sampling_std, se, rtol=1e-8)
    assert pv.ensemble_std < 1e-6 * se  # interpolation: nothing left to the initialisation
    np.testing.assert_allclose(pv.interval_95, [lo, hi], rtol=1e-7)
    # grouped: 40 episodes, 20 groups (episode_groups' seeded assignment), by hand
    y = 1.0 + rng.normal(size=40)
    data = _bandit(y, np.zeros(40, int))
    result = evaluate(data, EvaluateConfig(gamma=0.9), _arm(0))
    groups, g = ev.episode_groups(data.episode_ids, 20, 0)
    leave_out = np.array([y[groups != j].mean() for j in range(g)])
    pv = result.policy_value
    assert pv.dof == 19
    np.testing.assert_allclose(pv.sampling_std, jackknife_std(leave_out), rtol=1e-8)
    np.testing.assert_allclose(pv.sampling_std, se := y.std(ddof=1) / 40**0.5, rtol=0.3)
    assert se > 0


def test_compare_probability_and_correlated_difference(tmp_path):
    """Arm 0 pays 2 + N(0, 1), arm 1 N(0, 1): 'arm0' is better than 'arm1'. The difference
    of 'arm0' and 'mostly0' (arm 0 with probability 0.9) is 0.1 (ybar_0 - ybar_1): the
    two estimates share the data, and the jackknife of the difference (by hand: leave
    each episode out) is far below sqrt(var_a + var_b)."""
    rng = np.random.default_rng(3)
    arms = np.tile([0, 1], 10)
    y = np.where(arms == 0, 2.0, 0.0) + rng.normal(size=arms.size)
    data = _bandit(y, arms)

    class Mostly0:
        def __call__(self, obs):
            return 0

        def action_probs(self, obs):
            return np.array([0.9, 0.1])

    cmp = compare(data, {"arm0": _arm(0), "arm1": _arm(1), "mostly0": Mostly0()},
                  EvaluateConfig(gamma=0.9, groups=100))  # fmt: skip
    y0, y1 = y[arms == 0], y[arms == 1]

    def leave_one_out(f):
        return np.array([f(np.delete(y, e), np.delete(arms, e)) for e in range(y.size)])

    def diff01(yy, aa):
        return yy[aa == 0].mean() - yy[aa == 1].mean()

    d = cmp.difference("arm0", "arm1")
    sd = jackknife_std(leave_one_out(diff01))
    np.testing.assert_allclose(d.mean, y0.mean() - y1.mean(), rtol=1e-9)
    ens = np.hypot(cmp.values["arm0"].ensemble_std, cmp.values["arm1"].ensemble_std)
    np.testing.assert_allclose(d.std, np.hypot(sd, ens), rtol=1e-7)
    np.testing.assert_allclose(d.prob_greater, stats.t.cdf(d.mean / d.std, y.size - 1),
                               rtol=1e-9)  # fmt: skip
    assert d.prob_greater > 0.99
    np.testing.assert_allclose(cmp.difference("arm1", "arm0").prob_greater,
                               1 - d.prob_greater, rtol=1e-9)  # fmt: skip
    close = cmp.difference("arm0", "mostly0")
    sd_close = jackknife_std(leave_one_out(lambda yy, aa: 0.1 * diff01(yy, aa)))
    np.testing.assert_allclose(close.mean, 0.1 * (y0.mean() - y1.mean()), rtol=1e-8)
    np.testing.assert_allclose(
        close.std,
        np.hypot(
            sd_close, np.hypot(cmp.values["arm0"].ensemble_std, cmp.values["mostly0"].ensemble_std)
        ),
        rtol=1e-6,
    )
    independent = np.hypot(cmp.values["arm0"].std, cmp.values["mostly0"].std)
    assert close.std < 0.2 * independent
    # the command line writes the same numbers
    save_npz(tmp_path / "b.npz", data)
    (tmp_path / "arms_pol.py").write_text("def arm0(obs):\n    return 0\n\n"
                                          "def arm1(obs):\n    return 1\n")  # fmt: skip
    out = tmp_path / "cmp"
    r = CliRunner().invoke(main, ["compare", "--data", str(tmp_path / "b.npz"),
                                  "--policy", f"arm0={tmp_path / 'arms_pol.py'}:arm0",
                                  "--policy", f"arm1={tmp_path / 'arms_pol.py'}:arm1",
                                  "--gamma", "0.9", "--groups", "100", "--out", str(out),
                                  "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [
        "compare.md", "compare.png", "differences.csv", "summary.json", "tdntk-manifest.json",
        "values.csv"]  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    np.testing.assert_allclose(summary["differences"][0]["prob_a_greater"], d.prob_greater,
                               rtol=1e-9)  # fmt: skip
    assert "P(arm0 > arm1)" in r.output


def test_parse_policies():
    assert parse_policies(["a=pkg.mod:f", "pkg.mod:g", "behaviour", "b=sb3:PPO:m.zip"]) == {
        "a": "pkg.mod:f",
        "pkg.mod:g": "pkg.mod:g",
        "behaviour": None,
        "b": "sb3:PPO:m.zip",
    }
    with pytest.raises(ValueError, match="given twice"):
        parse_policies(["a=x:f", "a=x:g"])


# ---------------------------------------------------------------------- feasibility
def _extremes(r_min, r_max, gamma, horizon=3000):
    """min and max of sum_{t<T} gamma^t r_t over T in 1..horizon with every r_t at one end
    (the discounted sum is monotone in each r_t, so these are the extremes)."""
    t = np.arange(horizon)
    partial = np.cumsum(gamma**t)
    return min(r_min * partial.min(), r_min * partial.max()), max(
        r_max * partial.min(), r_max * partial.max()
    )


@pytest.mark.parametrize(
    "rewards, gamma", [([1, 1], 0.99), ([-1, 0], 0.9), ([0.5, 2], 0.95), ([-2, 3], 0.8)]
)
def test_feasible_range_is_reached_by_extreme_reward_sequences(rewards, gamma):
    lo, hi = feasible_range(rewards, gamma)
    np.testing.assert_allclose([lo, hi], _extremes(min(rewards), max(rewards), gamma), rtol=1e-9)


def test_feasible_range_gamma_one():
    assert feasible_range([0.5, 2], 1.0) == (0.5, np.inf)
    assert feasible_range([-1, 2], 1.0) == (-np.inf, np.inf)
    assert feasible_range([-1, -0.5], 1.0) == (-np.inf, -0.5)


def test_infeasible_values_and_constant_rewards_are_flagged(tmp_path):
    """CartPole pays +1 per step: at t = 0 every value is 0, below the least a policy can
    earn (1): flagged per state, for J, and in the warnings; rewards all equal are named."""
    data = _cartpole(60, seed=1)
    cfg = EvaluateConfig(gamma=0.9, t=0.0, interval="ensemble")
    result = evaluate(data, cfg)
    assert result.summary["feasible_range"] == pytest.approx([1.0, 10.0])
    assert not result.feasible.any() and not result.policy_value.feasible
    text = " ".join(result.summary["warnings"])
    assert "outside the feasible range [1, 10]" in text
    assert "every reward in the data equals 1" in text
    ev_write = __import__("tdntk.report.evaluate", fromlist=["write_evaluation"])
    ev_write.write_evaluation(result, tmp_path / "out")
    with open(tmp_path / "out" / "values.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["feasible"] for r in rows} == {"0"}


def test_all_zero_rewards_say_so():
    env = gymnasium.make("FrozenLake-v1", map_name="8x8")
    data = collect(env, None, 40, seed=0)
    assert np.all(data.rewards == 0)
    result = evaluate(data, EvaluateConfig(gamma=0.9))
    assert any("every reward in the data is 0" in w for w in result.summary["warnings"])
    np.testing.assert_allclose(result.value_mean, 0.0, atol=1e-12)


# ---------------------------------------------------------------------- evaluate + CLI
def test_evaluate_jackknife_refits_match_tdntk_and_cli_writes_policy_value(tmp_path):
    """Each per-state replicate is V with one group of episodes left out: equal to
    TDNTK rebuilt on the kept transitions (the general route). The CLI writes J."""
    data = _cartpole(80, seed=2)
    result = evaluate(data, EvaluateConfig(gamma=0.9))
    assert result.summary["interval"]["route"].startswith("closed-form")
    groups, g = ev.episode_groups(data.episode_ids, 20, 0)
    assert result.replicates.shape == (g, result.states.shape[0]) and g >= 3
    features = Features.from_spaces(data.observation_space, data.action_space, standardize=data)
    tr = to_transitions(data, features, 0.9)
    keep = np.flatnonzero(groups != 1)
    x = features.encode_all_actions(result.states)
    w = data.next_action_probs[~data.terminated]
    q = _td_model(tr.subset(keep)).predict(x.reshape(-1, x.shape[-1]), np.inf).mean[0]
    np.testing.assert_allclose(result.replicates[1], np.einsum("ik,ik->i", w, q.reshape(-1, 2)),
                               rtol=0, atol=1e-8)  # fmt: skip
    np.testing.assert_allclose(result.sampling_std, jackknife_std(result.replicates), rtol=1e-12)
    total = np.hypot(result.value_std, result.sampling_std)
    q975 = stats.t.ppf(0.975, g - 1)
    np.testing.assert_allclose(result.upper - result.lower, 2 * q975 * total, rtol=1e-9)
    # behaviour policy: J averages Q(s0, a0) at each episode's logged first action
    x0, w0, index, episode, _ = initial_inputs(data, tr, features, None, data.action_space)
    first = np.r_[0, np.flatnonzero(np.diff(data.episode_ids)) + 1]
    np.testing.assert_array_equal(x0[index][:, 0], tr.x[first])
    save_npz(tmp_path / "d.npz", data)
    args = ["evaluate", "--data", tmp_path / "d.npz", "--gamma", 0.9, "--out", tmp_path / "o"]
    r = CliRunner().invoke(main, [str(a) for a in args] + ["--no-progress"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    pv = summary["policy_value"]
    assert set(pv) >= {"mean", "std", "interval_95", "method"}
    np.testing.assert_allclose(pv["mean"], result.policy_value.mean, rtol=1e-10)
    np.testing.assert_allclose(pv["interval_95"], result.policy_value.interval_95, rtol=1e-10)
    assert "policy value J" in r.output
    with open(tmp_path / "o" / "values.csv") as f:
        header = next(csv.reader(f))
    assert {"value_sampling_std", "value_total_std", "value_lo_95", "value_hi_95",
            "feasible"} <= set(header)  # fmt: skip
