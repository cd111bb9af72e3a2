"""`evaluate` and the `tdntk collect` / `tdntk evaluate` commands.

Independent routes: dynamic programming on a tabular MDP, the environment's
rewards (gamma = 0), the NNGP prior computed directly (t = 0), a finite
linear-network ensemble trained by gradient descent (exact samples of the
closed form), and the one-hot stochastic policy against the deterministic one.
"""

from __future__ import annotations

import csv
import json

import gymnasium
import numpy as np
import pytest
from click.testing import CliRunner

from tdntk import MLP
from tdntk.cli import main
from tdntk.datasets import Features, OfflineData, collect, load_npz, save_npz
from tdntk.experiments.evaluate import EvaluateConfig, MemoryLimitError, evaluate, memory_estimate
from tdntk.report.evaluate import write_evaluation

POLICY_FILE = """
import numpy as np

def cartpole(obs):
    return int(obs[2] > 0)

def pendulum(obs):
    # a deterministic torque from the angular velocity (Box action of shape (1,))
    return np.array([float(np.clip(-0.5 * obs[2], -2.0, 2.0))])
"""


def _read_csv(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "my_policies.py"
    path.write_text(POLICY_FILE)
    return path


def _run(args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def _leftovers(folder):
    """Hidden staging folders left next to the outputs."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------- round trips
def test_cli_round_trip_cartpole_behaviour_policy(tmp_path):
    data_path, out = tmp_path / "cp.npz", tmp_path / "out"
    r = _run(["collect", "--env", "CartPole-v1", "--transitions", 64, "--seed", 0,
              "--out", data_path, "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = _run(["evaluate", "--data", data_path, "--gamma", 0.9, "--t", 1000, "--out", out,
              "--plot-coordinate", 2, "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    # the results and tdntk's manifest of what it wrote; no checkpoints/ left after success
    assert sorted(p.name for p in out.iterdir()) == [
        "summary.json", "tdntk-manifest.json", "values.csv", "values.png",
    ]  # fmt: skip
    manifest = json.loads((out / "tdntk-manifest.json").read_text())
    assert manifest["command"] == "evaluate" and manifest["status"] == "complete"
    assert manifest["files"] == ["summary.json", "values.csv", "values.png"]
    assert (out / "values.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    values = _read_csv(out / "values.csv")
    summary = json.loads((out / "summary.json").read_text())
    # the CSV equals the Python API on the same file (the behaviour policy: recorded probs)
    data = load_npz(data_path)
    api = evaluate(data, EvaluateConfig(gamma=0.9, t=1000))
    np.testing.assert_allclose(values["value_mean"], api.value_mean, rtol=1e-12)
    np.testing.assert_allclose(values["value_std"], api.value_std, rtol=1e-12)
    # states: the non-terminal next observations, written in raw coordinates
    states = data.next_observations[~data.terminated]
    np.testing.assert_array_equal(values["obs_2"], states[:, 2])
    assert summary["policy"] == "behaviour (recorded next-action probabilities)"
    assert summary["data"]["next_inputs_per_transition"] == 2
    assert summary["learning_rate_source"] == "0.5 x critical (eq. 11)"
    np.testing.assert_allclose(summary["learning_rate"], 0.5 * summary["critical_learning_rate"])
    assert summary["plot_coordinate"] == 2 and summary["timings_s"]["total"] > 0
    assert np.all(values["value_std"] > 0)


def test_cli_round_trip_pendulum_gamma0_recovers_rewards(tmp_path, policy_file):
    """gamma = 0, t = inf, on-policy deterministic data: V(s_i) = Q(s_i, a_i) = r_i and
    the ensemble variance at the training inputs vanishes (Z = I there)."""
    data_path, out = tmp_path / "pend.npz", tmp_path / "out"
    spec = f"{policy_file}:pendulum"
    r = _run(["collect", "--env", "Pendulum-v1", "--policy", spec, "--transitions", 64,
              "--out", data_path, "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = _run(["evaluate", "--data", data_path, "--policy", spec, "--gamma", 0, "--t", "inf",
              "--target-tau", 0.5, "--out", out, "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    values = _read_csv(out / "values.csv")
    data = load_npz(data_path)
    assert data.actions.shape == (64, 1)
    # rewards come from the environment; tolerance: conditioning of Theta_XX at n = 64
    np.testing.assert_allclose(values["value_mean"], data.rewards, rtol=0, atol=1e-6)
    assert np.max(values["value_std"]) < 1e-4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"] == spec and summary["settings"]["target_tau"] == 0.5


# ---------------------------------------------------------------------- values
def _tabular_mdp(stochastic: bool):
    """3 states (one-hot observations) x 2 actions, each (s, a) once; (2, 1) terminates."""
    nxt = np.array([[1, 2], [2, 0], [0, 2]])  # next state of (s, a)
    reward = np.array([[0.0, 1.0], [0.5, -1.0], [2.0, 3.0]])
    probs = np.array([[0.3, 0.7], [0.8, 0.2], [0.5, 0.5]])
    if not stochastic:
        probs = np.eye(2)[[1, 0, 1]]

    class Policy:
        def __call__(self, obs):
            return int(np.argmax(probs[int(np.argmax(obs))]))

    if stochastic:
        Policy.action_probs = lambda self, obs: probs[int(np.argmax(obs))]
    s, a = np.repeat(np.arange(3), 2), np.tile(np.arange(2), 3)
    terminated = (s == 2) & (a == 1)
    eye = np.eye(3)
    data = OfflineData(
        eye[s], a, reward[s, a], eye[nxt[s, a]], terminated, np.zeros(6, bool),
        observation_space=gymnasium.spaces.Box(0.0, 1.0, (3,), np.float64),
        action_space=gymnasium.spaces.Discrete(2),
    )  # fmt: skip
    return data, Policy(), probs, nxt, reward, terminated.reshape(3, 2)


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("tau", [None, 0.5])
def test_tabular_values_match_dynamic_programming(stochastic, tau):
    data, policy, probs, nxt, reward, terminal = _tabular_mdp(stochastic)
    gamma = 0.9
    # dynamic programming: Q = r + gamma (1 - term) sum_a' pi(a'|s') Q(s', a'), solved exactly
    bellman = np.zeros((6, 6))
    for s in range(3):
        for a in range(2):
            if not terminal[s, a]:
                bellman[2 * s + a, 2 * nxt[s, a] : 2 * nxt[s, a] + 2] = gamma * probs[nxt[s, a]]
    q = np.linalg.solve(np.eye(6) - bellman, reward.reshape(-1)).reshape(3, 2)
    v = np.sum(probs * q, axis=1)
    estimator = "residual-gradient" if tau is None else "td"
    cfg = EvaluateConfig(gamma=gamma, t=np.inf, estimator=estimator, target_tau=tau or 1.0,
                         standardize=False)  # fmt: skip
    result = evaluate(data, cfg, policy=policy, states=np.eye(3))
    # tolerance: the fixed point is a linear solve with the 6 x 6 NTK (well conditioned)
    np.testing.assert_allclose(result.value_mean, v, rtol=0, atol=1e-7)


def test_one_hot_stochastic_policy_equals_deterministic():
    data = collect("CartPole-v1", None, 64, seed=2)

    def det(obs):
        return int(obs[2] + 0.5 * obs[3] > 0)

    class OneHot:
        def __call__(self, obs):
            return det(obs)

        def action_probs(self, obs):
            return np.eye(2)[det(obs)]

    for cfg in (EvaluateConfig(gamma=0.95, t=500.0, estimator="residual-gradient"),
                EvaluateConfig(gamma=0.95, t=64.0, target_tau=0.2, loss="mean")):  # fmt: skip
        a = evaluate(data, cfg, policy=det)
        b = evaluate(data, cfg, policy=OneHot())
        assert a.summary["data"]["next_inputs_per_transition"] == 1
        assert b.summary["data"]["next_inputs_per_transition"] == 2
        # same linear algebra up to round-off (zero-weight candidates drop out of G P)
        np.testing.assert_allclose(b.value_mean, a.value_mean, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(b.value_std, a.value_std, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(
            b.summary["critical_learning_rate"], a.summary["critical_learning_rate"], rtol=1e-9
        )


def test_t0_is_the_prior_of_the_state_value():
    """At t = 0 the mean is 0 and Var V(s) = w^T K(x_s, x_s) w with the NNGP kernel K."""
    data = collect("CartPole-v1", None, 32, seed=5)
    cfg = EvaluateConfig(gamma=0.9, t=0.0, net=MLP(depth=3, activation="erf", bias_var=0.3))
    result = evaluate(data, cfg)
    features = Features.from_spaces(data.observation_space, data.action_space, standardize=data)
    keep = ~data.terminated
    x = features.encode_all_actions(data.next_observations[keep])  # (m, 2, d)
    w = data.next_action_probs[keep]
    net = MLP(depth=3, activation="erf", bias_var=0.3)
    var = np.array([wi @ net.kernels(xi)[0] @ wi for xi, wi in zip(x, w, strict=True)])
    np.testing.assert_array_equal(result.value_mean, 0.0)
    np.testing.assert_allclose(result.value_std, np.sqrt(var), rtol=1e-10)


def test_finite_linear_ensemble_samples_the_closed_form(tmp_path):
    """A linear network (depth 0) is its own linearisation, so E members trained by
    discrete GD are exact samples of the closed form with time='discrete'.

    Each state against its own standard errors (SE). The values are linear in the
    Gaussian parameters, hence exactly Gaussian: the sample mean has SE std / sqrt(E),
    the sample variance (ddof=1) var sqrt(2 / (E - 1)) = 2.2 % of var at E = 4096.
    Tolerance 4.5 SE per state and statistic (a correct closed form fails with
    probability ~7e-6 each; 24 states), i.e. +-10 % on each state's variance and
    +-0.07 std on its mean; float32 training round-off (~1e-6 relative) is far below.
    A linear member is cheap: 4096 of them take no longer than 64 did (~1.5 s).
    """
    data = collect("CartPole-v1", None, 24, seed=1)
    members = 4096
    cfg = EvaluateConfig(gamma=0.9, t=32.0, time="discrete", ensemble=members,
                         net=MLP(depth=0, width=512, activation="identity"))  # fmt: skip
    result = evaluate(data, cfg)
    assert result.summary["ensemble"]["members"] == members
    var = result.value_std**2
    z_mean = (result.ensemble_mean - result.value_mean) / np.sqrt(var / members)
    z_var = (result.ensemble_std**2 - var) / (var * np.sqrt(2 / (members - 1)))
    assert np.all(np.abs(z_mean) < 4.5), z_mean
    assert np.all(np.abs(z_var) < 4.5), z_var
    write_evaluation(result, tmp_path / "ens")
    values = _read_csv(tmp_path / "ens" / "values.csv")
    np.testing.assert_allclose(values["ensemble_std"], result.ensemble_std, rtol=1e-12)


# ---------------------------------------------------------------------- limits and errors
def test_memory_limit_chooses_the_matrix_free_route_or_refuses_clearly(tmp_path):
    """Dense when it fits; the matrix-free route when it does not (same values); a clear
    refusal naming a fitting subsample when the dense route is forced."""
    data = collect("CartPole-v1", None, 200, seed=0)
    save_npz(tmp_path / "d.npz", data)
    base = evaluate(data, EvaluateConfig(gamma=0.9))
    assert base.summary["solver"]["name"] == "dense"
    memory = base.summary["memory"]
    dense_need, krylov_need = memory["dense_estimate_bytes"], memory["krylov_estimate_bytes"]
    assert krylov_need < dense_need
    limit = 0.5 * (dense_need + krylov_need) / 2**30  # the dense route no longer fits
    small = evaluate(data, EvaluateConfig(gamma=0.9, memory_limit_gib=limit, tol=1e-10))
    solver = small.summary["solver"]
    assert solver["name"] == "krylov" and solver["iterations"] > 0 and solver["tolerance"] == 1e-10
    assert all(s["converged"] for s in solver["solves"])
    np.testing.assert_allclose(small.value_mean, base.value_mean, rtol=0,
                               atol=1e-7 * np.abs(base.value_mean).max())  # fmt: skip
    cfg = EvaluateConfig(gamma=0.9, memory_limit_gib=limit, solver="dense")
    with pytest.raises(MemoryLimitError, match=r"n=200 transitions .* GiB") as info:
        evaluate(data, cfg)
    message = str(info.value)
    assert "available" in message and "--solver krylov" in message
    fit = int(message.split("--max-transitions ")[1].split()[0])
    assert 100 <= fit < 200
    out = tmp_path / "out"
    args = ["evaluate", "--data", tmp_path / "d.npz", "--memory-limit-gib", limit, "--gamma", 0.9,
            "--solver", "dense", "--out", out, "--no-progress"]  # fmt: skip
    r = _run(args)
    assert r.exit_code == 1 and "--max-transitions" in r.output and "Traceback" not in r.output
    assert not out.exists() and _leftovers(tmp_path) == []
    r = _run(args + ["--max-transitions", fit])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "summary.json").read_text())["data"]["transitions_used"] == fit
    assert memory_estimate(10, 5, 3, False) < memory_estimate(20, 5, 3, False)


def test_max_transitions_subsamples_reproducibly():
    data = collect("CartPole-v1", None, 50, seed=0)
    a, b, c = data.subsample(20, seed=1), data.subsample(20, seed=1), data.subsample(20, seed=2)
    np.testing.assert_array_equal(a.observations, b.observations)
    assert not np.array_equal(a.observations, c.observations)
    # rows are original transitions, in order
    index = [
        int(np.flatnonzero((data.observations == row).all(axis=1))[0]) for row in a.observations
    ]
    assert index == sorted(index) and len(set(index)) == 20
    np.testing.assert_array_equal(a.rewards, data.rewards[index])
    assert data.subsample(100) is data


def _write_npz(path, **changes):
    rng = np.random.default_rng(0)
    arrays = dict(
        observations=rng.normal(size=(6, 2)), actions=rng.integers(0, 2, 6),
        rewards=rng.normal(size=6), next_observations=rng.normal(size=(6, 2)),
        terminated=np.zeros(6, bool), truncated=np.zeros(6, bool),
        next_actions=rng.integers(0, 2, 6),
    )  # fmt: skip
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_column", "missing required array(s) rewards"),
        ("nan_reward", "OfflineData.rewards: contains NaN"),
        ("mismatched", "OfflineData.actions: has 5 rows but observations has 6"),
        ("bad_policy", "cannot import 'no_such_package_xyz.mod'"),
        ("missing_policy_attr", "has no attribute 'nope'"),
        ("missing_data", "does not exist"),
        ("states_without_policy", "needs a policy"),
        ("bad_plot_coordinate", "--plot-coordinate"),
        ("bad_gamma", "gamma must lie in [0, 1]"),
        ("ensemble_at_inf", "finite networks need a finite t"),
    ],
)
def test_evaluate_bad_inputs_give_clean_errors_and_no_output(tmp_path, policy_file, case, message):
    good = _write_npz(tmp_path / "good.npz")
    states = tmp_path / "states.npz"
    np.savez(states, observations=np.zeros((3, 2)))
    data, extra = good, []
    if case == "missing_column":
        data = _write_npz(tmp_path / "bad.npz", rewards=None)
    elif case == "nan_reward":
        data = _write_npz(tmp_path / "bad.npz", rewards=np.r_[np.zeros(5), np.nan])
    elif case == "mismatched":
        data = _write_npz(tmp_path / "bad.npz", actions=np.zeros(5, int))
    elif case == "bad_policy":
        extra = ["--policy", "no_such_package_xyz.mod:act"]
    elif case == "missing_policy_attr":
        extra = ["--policy", f"{policy_file}:nope"]
    elif case == "missing_data":
        data = tmp_path / "absent.npz"
    elif case == "states_without_policy":
        extra = ["--states", states]
    elif case == "bad_plot_coordinate":
        extra = ["--plot-coordinate", 5]
    elif case == "bad_gamma":
        extra = ["--gamma", 1.5]
    elif case == "ensemble_at_inf":
        extra = ["--ensemble", 2, "--t", "inf"]
    out = tmp_path / "out"
    r = _run(["evaluate", "--data", data, "--out", out, "--t", "inf", *extra])
    assert r.exit_code != 0
    assert message in r.output, r.output
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "NoSuchEnv-v0"], "unknown Gymnasium environment 'NoSuchEnv-v0'"),
        (["--env", "CartPole-v1", "--policy", "no_such_package_xyz:f"], "cannot import"),
        (["--env", "CartPole-v1", "--transitions", 0], "--transitions"),
    ],
)
def test_collect_bad_inputs_give_clean_errors_and_no_file(tmp_path, args, message):
    out = tmp_path / "d.npz"
    r = _run(["collect", *args, "--out", out, "--no-progress"])
    assert r.exit_code != 0 and message in r.output, r.output
    assert isinstance(r.exception, SystemExit)  # a click error, not a traceback
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_previous_output_untouched(tmp_path, monkeypatch):
    data = _write_npz(tmp_path / "d.npz")
    out = tmp_path / "out"
    r = _run(["evaluate", "--data", data, "--t", "inf", "--out", out, "--no-progress"])
    assert r.exit_code == 0, r.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import tdntk.report.evaluate

    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(tdntk.report.evaluate, "write_json", broken)
    r = _run(["evaluate", "--data", data, "--t", "0", "--out", out, "--no-progress",
              "--overwrite"])  # fmt: skip
    assert r.exit_code == 1 and "disk full (simulated)" in r.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []


def test_docs_python_example_runs(tmp_path, monkeypatch):
    """docs/datasets.md's Python example runs as written (docs cannot drift from the code)."""
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "docs/datasets.md[python]", "exec"), {})
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "summary.json", "tdntk-manifest.json", "values.csv", "values.png",
    ]  # fmt: skip
    assert load_npz(tmp_path / "cartpole.npz").n == 128


def test_cli_defaults_give_the_certainty_equivalent_value_of_a_stochastic_mdp(tmp_path):
    """`tdntk evaluate` with its defaults (TD, t = inf) on slippery FrozenLake data written
    to .npz equals dynamic programming on the dataset's empirical MDP (uniform policy)."""
    env = gymnasium.make("FrozenLake-v1").unwrapped
    n_s, n_a, gamma = 16, 4, 0.95
    terminal = {s2 for s in env.P for a in env.P[s] for _, s2, _, done in env.P[s][a] if done}
    rng = np.random.default_rng(0)
    rows = []  # (s, a, r, s', done): every non-terminal (s, a) sampled 5 times from env.P
    for s in (s for s in range(n_s) if s not in terminal):
        for a in range(n_a):
            outcomes = env.P[s][a]
            for j in rng.choice(len(outcomes), size=5, p=[o[0] for o in outcomes]):
                rows.append((s, a, outcomes[j][2], outcomes[j][1], outcomes[j][3]))
    s, a, r, s2, done = (np.array(c) for c in zip(*rows, strict=True))
    eye = np.eye(n_s)
    data = OfflineData(
        eye[s], a, r, eye[s2], done, np.zeros(len(rows), bool),
        next_action_probs=np.full((len(rows), n_a), 1.0 / n_a),
        observation_space=gymnasium.spaces.Discrete(n_s),
        action_space=gymnasium.spaces.Discrete(n_a),
    )  # fmt: skip
    save_npz(tmp_path / "fl.npz", data)
    r_cli = _run(["evaluate", "--data", tmp_path / "fl.npz", "--gamma", gamma,
                  "--out", tmp_path / "out", "--no-progress"])  # fmt: skip
    assert r_cli.exit_code == 0, r_cli.output
    # certainty equivalence: Q(s, a) = mean over samples of r + gamma (1 - done) mean_b Q(s', b)
    pairs = sorted(set(zip(s.tolist(), a.tolist(), strict=True)))
    index = {p: i for i, p in enumerate(pairs)}
    lhs, rhs = np.zeros((len(pairs), len(pairs))), np.zeros(len(pairs))
    for si, ai, ri, s2i, di in rows:
        i = index[(si, ai)]
        lhs[i, i] += 1
        rhs[i] += ri
        if not di:
            for b in range(n_a):
                lhs[i, index[(s2i, b)]] -= gamma / n_a
    q = np.linalg.solve(lhs, rhs)
    v = {st: np.mean([q[index[(st, b)]] for b in range(n_a)]) for st in {p[0] for p in pairs}}
    values = _read_csv(tmp_path / "out" / "values.csv")
    expected = np.array([v[int(i)] for i in values["state_index"]])
    assert len(expected) == len({int(x) for x in s2[~done]})  # each non-terminal s' once
    np.testing.assert_allclose(values["value_mean"], expected, rtol=1e-7, atol=1e-9)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["estimator"]["name"] == "td" and summary["estimator"]["converges"]
