"""The two estimators' fixed points, stability and large t, against exact answers.

Independent routes: the certainty-equivalence value of a tabular dataset's
empirical MDP by a linear solve written here (dynamic programming), hand-solved
least-squares Bellman residuals, the linear TD recursion of Tsitsiklis and Van
Roy in closed form, and long finite t computed by the exponential route.
"""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest

import tdntk
from tdntk import MLP, DivergenceWarning, Schedule, SoftTarget, Transitions
from tdntk.envs.toy import dataset_states, toy_transitions

NET = MLP(depth=2, width=512, activation="relu")


def branching_example():
    """A -> B or A -> C with probability 1/2; B pays 1 and C pays 0, both terminal; gamma = 1.

    One-hot inputs (A, B, C); the transition from A appears twice (one per next state).
    """
    a, b, c = np.eye(3)
    x = np.stack([a, a, b, c])
    x_next = np.stack([b, c, b, c])  # the terminal transitions' next inputs are never used
    reward = np.array([0.0, 0.0, 1.0, 0.0])
    data = Transitions.from_gamma(x, reward, x_next, 1.0, np.array([False, False, True, True]))
    return data, np.eye(3)


def test_td_fixed_point_with_a_repeated_input_is_the_true_value():
    data, x_test = branching_example()
    model = tdntk.TDNTK(NET, data, Schedule(0.05, SoftTarget(0.5)))
    assert model.dynamics.rank == 3  # A appears twice: Theta_XX (4 x 4) has rank 3
    pred = model.predict(x_test, [1e7, np.inf])
    # the true values, from the MDP by hand: V(A) = (1 + 0) / 2
    np.testing.assert_allclose(pred.mean[1], [0.5, 1.0, 0.0], atol=1e-10)
    np.testing.assert_allclose(pred.mean[0], pred.mean[1], atol=1e-8)  # long t -> inf
    np.testing.assert_allclose(pred.cov[0], pred.cov[1], atol=1e-8)


def test_residual_gradient_is_biased_by_double_sampling():
    """The single network minimises (a-b)^2 + (a-c)^2 + (b-1)^2 + c^2: a, b, c = 1/2, 3/4, 1/4."""
    data, x_test = branching_example()
    pred = tdntk.TDNTK(NET, data, Schedule(0.05)).predict(x_test, [1e8, np.inf])
    np.testing.assert_allclose(pred.mean[1], [0.5, 0.75, 0.25], atol=1e-9)
    np.testing.assert_allclose(pred.mean[0], pred.mean[1], atol=1e-7)


# ---------------------------------------------------------------------- tabular data
def tabular_dataset(env_id, samples, gamma, seed=0, **kwargs):
    """Transitions drawn from a Gymnasium toy-text environment's own model `P`.

    Every non-terminal state and action is sampled `samples` times; the target
    policy is uniform over actions (k = A next inputs with weights 1/A), inputs
    are one-hot(state) + one-hot(action). Returns (data, records, S, A) with
    records (s, a, r, s', terminated) per transition.
    """
    env = gymnasium.make(env_id, **kwargs).unwrapped
    n_s, n_a = env.observation_space.n, env.action_space.n
    terminal = {s2 for s in env.P for a in env.P[s] for _, s2, _, done in env.P[s][a] if done}
    reached = {int(s2) for s in env.P for a in env.P[s] for _, s2, _, _ in env.P[s][a]}
    states = [s for s in range(n_s) if s not in terminal and (s in reached or s == 0)]
    rng = np.random.default_rng(seed)
    records = []
    for s in states:
        for a in range(n_a):
            outcomes = env.P[s][a]
            probs = np.array([o[0] for o in outcomes])
            for j in rng.choice(len(outcomes), size=samples, p=probs / probs.sum()):
                _, s2, r, done = outcomes[j]
                records.append((s, a, float(r), int(s2), bool(done)))
    eye_s, eye_a = np.eye(n_s), np.eye(n_a)
    x = np.array([np.concatenate([eye_s[s], eye_a[a]]) for s, a, *_ in records])
    x_next = np.array([[np.concatenate([eye_s[s2], eye_a[b]]) for b in range(n_a)]
                       for *_, s2, _ in records])  # fmt: skip
    data = Transitions.from_gamma(
        x, [r[2] for r in records], x_next, gamma, [r[4] for r in records],
        np.full((len(records), n_a), 1.0 / n_a),
    )  # fmt: skip
    return data, records, n_s, n_a


def empirical_mdp_values(records, n_s, n_a, gamma):
    """Q of the dataset's empirical MDP under the uniform policy, by one linear solve.

    Q(s, a) = mean over the samples of (s, a) of r + gamma (1 - done) mean_b Q(s', b),
    over the (s, a) pairs in the data (terminal next states contribute 0).
    """
    pairs = sorted({(s, a) for s, a, *_ in records})
    index = {p: i for i, p in enumerate(pairs)}
    m = len(pairs)
    lhs, rhs, counts = np.zeros((m, m)), np.zeros(m), np.zeros(m)
    for s, a, r, s2, done in records:
        i = index[(s, a)]
        counts[i] += 1
        rhs[i] += r
        lhs[i, i] += 1
        if not done:
            for b in range(n_a):
                lhs[i, index[(s2, b)]] -= gamma / n_a
    q = np.linalg.solve(lhs, rhs)
    eye_s, eye_a = np.eye(n_s), np.eye(n_a)
    x_pairs = np.array([np.concatenate([eye_s[s], eye_a[a]]) for s, a in pairs])
    return x_pairs, q


@pytest.mark.parametrize(
    "env_id, kwargs, samples, gamma",
    [
        ("FrozenLake-v1", {}, 6, 0.95),  # slippery: three outcomes per action
        ("CliffWalking-v1", {}, 2, 0.9),  # deterministic, each pair sampled twice
    ],
)
def test_td_fixed_point_is_certainty_equivalence(env_id, kwargs, samples, gamma):
    data, records, n_s, n_a = tabular_dataset(env_id, samples, gamma, **kwargs)
    x_pairs, q_true = empirical_mdp_values(records, n_s, n_a, gamma)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        model = tdntk.TDNTK(NET, data, Schedule(1e-3, SoftTarget(1.0)))
        q = model.predict(x_pairs, np.inf, full_cov=False).mean[0]
    assert model.dynamics.rank == len(x_pairs)  # one direction per distinct input
    np.testing.assert_allclose(q, q_true, rtol=1e-8, atol=1e-8 * np.abs(q_true).max())


@pytest.mark.parametrize("env_id", ["CliffWalking-v1", "FrozenLake-v1"])
def test_estimators_agree_on_deterministic_data(env_id):
    kwargs = {"is_slippery": False} if env_id == "FrozenLake-v1" else {}
    data, records, n_s, n_a = tabular_dataset(env_id, 2, 0.9, **kwargs)
    x_pairs, q_true = empirical_mdp_values(records, n_s, n_a, 0.9)
    td = tdntk.TDNTK(NET, data, Schedule(1e-3, SoftTarget(0.3))).predict(x_pairs, np.inf)
    rg = tdntk.TDNTK(NET, data, Schedule(1e-3)).predict(x_pairs, np.inf)
    scale = np.abs(q_true).max()
    np.testing.assert_allclose(td.mean[0], q_true, atol=1e-8 * scale)
    np.testing.assert_allclose(rg.mean[0], q_true, atol=1e-6 * scale)


def test_bellman_fixed_point_of_the_target_network(problem):
    """tau > 0, distinct inputs: Q(X) = r + G P Q(X'') in the mean at t = inf;
    tau = 0: the primary regresses onto r + G P Q0(X''), whose mean is r."""
    data, _ = problem
    td = tdntk.TDNTK(NET, data, Schedule(0.05, SoftTarget(0.2)))
    q = td.predict(data.x, np.inf).mean[0]
    q_next = td.predict(data.x_next_flat, np.inf).mean[0]
    np.testing.assert_allclose(q, data.reward + data.bellman(q_next), atol=1e-8)
    frozen = tdntk.TDNTK(NET, data, Schedule(0.05, SoftTarget(0.0)))
    np.testing.assert_allclose(frozen.predict(data.x, np.inf).mean[0], data.reward, atol=1e-8)


# ---------------------------------------------------------------------- stability
LINEAR = MLP(depth=0, activation="identity", weight_var=1.0, bias_var=0.0)  # Q(x) = w x


def two_state_chain(gamma):
    """Tsitsiklis and Van Roy's off-policy example: features 1 -> 2, reward 1, no way back.

    Semi-gradient TD on w: w <- w + eta (1 + gamma 2 w - w): its fixed point
    w = 1 / (1 - 2 gamma) is attracting iff 2 gamma < 1.
    """
    return Transitions.from_gamma([[1.0]], [1.0], [[2.0]], gamma)


@pytest.mark.parametrize("time", ["continuous", "discrete"])
def test_diverging_td_warns_and_gives_nan(time):
    data = two_state_chain(0.9)
    with pytest.warns(DivergenceWarning, match="diverges"):
        model = tdntk.TDNTK(LINEAR, data, Schedule(0.1, SoftTarget(0.5), time=time))
        assert not model.dynamics.converges  # warns when the dynamics are built
    pred = model.predict(np.array([[1.0], [2.0]]), [10.0, np.inf])
    assert np.all(np.isfinite(pred.mean[0])) and np.all(np.isnan(pred.mean[1]))
    # finite t is still exact: TD with a target on w (eq. 12/13), integrated by hand
    w, w_bar = 0.0, 0.0
    if time == "discrete":
        for _ in range(10):
            w = w + 0.1 * (1 + 0.9 * 2 * w_bar - w)
            w_bar = 0.5 * w_bar + 0.5 * w
        np.testing.assert_allclose(pred.mean[0], [w, 2 * w], rtol=1e-12)
    # the residual gradient converges on the same data
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        assert tdntk.TDNTK(LINEAR, data, Schedule(0.1, time=time)).dynamics.converges


@pytest.mark.parametrize("time", ["continuous", "discrete"])
def test_stable_td_does_not_warn_and_reaches_its_fixed_point(time):
    data = two_state_chain(0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = tdntk.TDNTK(LINEAR, data, Schedule(0.1, SoftTarget(0.5), time=time))
        pred = model.predict(np.array([[1.0], [2.0]]), np.inf)
    w = 1.0 / (1.0 - 2 * 0.4)
    np.testing.assert_allclose(pred.mean[0], [w, 2 * w], rtol=1e-12)


def test_diverging_discrete_residual_gradient_gives_nan(problem):
    data, x_test = problem
    crit = tdntk.TDNTK(NET, data, Schedule(0.05)).max_stable_learning_rate
    with pytest.warns(DivergenceWarning, match="eta l_max"):
        model = tdntk.TDNTK(NET, data, Schedule(1.5 * crit, time="discrete"))
        model.dynamics  # noqa: B018 - the warnings come with the dynamics
    pred = model.predict(x_test, [5, np.inf])
    assert np.all(np.isfinite(pred.mean[0])) and np.all(np.isnan(pred.mean[1]))


def test_singular_td_system_has_no_fixed_point():
    """gamma = 1 and no terminal transition: a cycle A -> B -> A has no finite value."""
    a, b = np.eye(2)
    data = Transitions.from_gamma([a, b], [1.0, 0.0], [b, a], 1.0)
    model = tdntk.TDNTK(NET, data, Schedule(0.05, SoftTarget(0.5)))
    with pytest.warns(DivergenceWarning, match="no unique value|diverges"):
        pred = model.predict(np.eye(2), np.inf)
    assert np.all(np.isnan(pred.mean))


# ---------------------------------------------------------------------- large t
def test_large_t_equals_infinity_for_the_target_network():
    data = toy_transitions(dataset_states(), gamma=1.0)
    x = np.linspace(-0.5, 2.5, 31)[:, None]
    model = tdntk.TDNTK(NET, data, Schedule(0.01, SoftTarget(0.1)))
    pred = model.predict(x, [1e12, 1e16, np.inf])
    for i in (0, 1):
        np.testing.assert_allclose(pred.mean[i], pred.mean[2], atol=1e-8)
        np.testing.assert_allclose(pred.cov[i], pred.cov[2], atol=1e-8)


def test_filter_leaves_the_null_space_out_at_every_t():
    """Repeated inputs put exact zeros in Theta_bar's spectrum: they are dropped, so
    the answer at large t is the answer at t = inf."""
    data, x_test = branching_example()
    model = tdntk.TDNTK(NET, data, Schedule(0.05))
    assert model.dynamics.rank == 3
    pred = model.predict(x_test, [1e14, np.inf])
    np.testing.assert_allclose(pred.mean[0], pred.mean[1], atol=1e-9)
