"""Reduced coordinates: repeated inputs and transitions merged with counts, exactly.

Independent routes: dense matrices built entry by entry, the function-space ODE
and step-by-step references of test_dynamics on data with repeated rows, and
dynamic programming on the empirical MDP of a large tabular dataset.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_problem
from test_dynamics import random_init_outputs, reference_continuous, reference_discrete
from test_fixed_points import empirical_mdp_values

import tdntk
from tdntk import Schedule, SoftTarget, Transitions
from tdntk.reduced import Sparse, reduce_transitions

NET = tdntk.MLP(depth=2, width=512)


def repeated_problem(seed=3):
    """A random problem whose transitions appear 1-3 times, shuffled (with terminal ones)."""
    data, x_test = make_problem(seed=seed, n=7, k=2)
    rng = np.random.default_rng(seed)
    index = rng.permutation(np.repeat(np.arange(data.n), rng.integers(1, 4, data.n)))
    return data.subset(index), x_test


def test_sparse_products_equal_dense_matrices():
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 4, 12), rng.integers(0, 6, 12)
    vals = rng.normal(size=12)
    s = Sparse.from_triplets(rows, cols, vals, (4, 6))
    dense = np.zeros((4, 6))
    for r, c, v in zip(rows, cols, vals, strict=True):
        dense[r, c] += v
    np.testing.assert_allclose(s.dense(), dense, atol=1e-15)
    m, u = rng.normal(size=(6, 3)), rng.normal(size=(4, 2))
    np.testing.assert_allclose(s.apply(m), dense @ m, atol=1e-14)
    np.testing.assert_allclose(s.apply_t(u), dense.T @ u, atol=1e-14)


@pytest.mark.parametrize("td", [False, True])
def test_reduction_reproduces_the_full_kernels(td):
    """U^T Theta_bar U (residual gradient) or U^T Theta_XX U (TD), and U^T U = I."""
    data, _ = repeated_problem()
    red = reduce_transitions(data, td)
    n, k = data.n, data.k
    gp = np.zeros((n, n * k))
    for i in range(n):
        gp[i, i * k : (i + 1) * k] = data.discount[i] * data.next_weights[i]
    s = np.concatenate([data.x, data.x_next_flat])
    _, theta = NET.kernels(s)
    b = np.hstack([np.eye(n), -gp])  # D = B J: U - G P V
    u = np.stack([red.lift(e) for e in np.eye(red.p)], axis=1)  # (n, p)
    np.testing.assert_allclose(u.T @ u, np.eye(red.p), atol=1e-12)
    _, theta_y = NET.kernels(red.inputs)
    driving = red.load.dense() @ theta_y @ red.load.dense().T
    full = (b @ theta @ b.T) if not td else theta[:n, :n]
    np.testing.assert_allclose(driving, u.T @ full @ u, rtol=1e-10, atol=1e-10)
    assert red.p < n and red.inputs.shape[0] < n * (1 + k)  # repeats were merged
    if td:
        boot = red.bootstrap.dense() @ theta_y @ red.load.dense().T
        np.testing.assert_allclose(boot, u.T @ (gp @ theta[n:, :n]) @ u, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tau", [None, 0.0, 0.3])
@pytest.mark.parametrize("time", ["continuous", "discrete"])
def test_repeated_transitions_follow_the_function_space_references(tau, time):
    data, x_test = repeated_problem()
    target = None if tau is None else SoftTarget(tau)
    model = tdntk.TDNTK(NET, data, Schedule(0.02, target, time=time))
    q0, q0_x, q0_next, q0_test = random_init_outputs(data, x_test)
    if time == "continuous":
        times = [1.0, 60.0]
        ref = reference_continuous(NET, data, x_test, q0, 0.02, tau, times)
    else:
        times = [1, 9, 40]
        ref = reference_discrete(NET, data, x_test, q0, 0.02, tau, times)
    closed = model.predict_from_init(x_test, times, q0_test, q0_x, q0_next)
    np.testing.assert_allclose(closed, ref, rtol=1e-6, atol=1e-8 * np.abs(ref).max())


def test_a_hundred_thousand_tabular_transitions_cost_their_distinct_pairs():
    """Slippery FrozenLake, 10^5 transitions of a uniform policy sampled from env.P:
    the TD fixed point is the empirical MDP's value, computed on <= 64 distinct pairs."""
    import gymnasium

    env = gymnasium.make("FrozenLake-v1").unwrapped
    n_s, n_a, n, gamma = 16, 4, 100_000, 0.95
    terminal = {s2 for s in env.P for a in env.P[s] for _, s2, _, d in env.P[s][a] if d}
    live = np.array([s for s in range(n_s) if s not in terminal])
    # outcome tables (S, A, 3); terminal states (one outcome, never sampled) repeat it
    table = [[(env.P[si][ai] * 3)[:3] for ai in range(n_a)] for si in range(n_s)]
    next_state = np.array([[[o[1] for o in row] for row in rows] for rows in table])
    pay = np.array([[[o[2] for o in row] for row in rows] for rows in table])
    rng = np.random.default_rng(0)
    s, a = rng.choice(live, n), rng.integers(0, n_a, n)
    outcome = rng.integers(0, 3, n)  # the three slippery outcomes are equally likely
    s2, r = next_state[s, a, outcome], pay[s, a, outcome]
    done = np.isin(s2, list(terminal))
    eye_s, eye_a = np.eye(n_s), np.eye(n_a)
    x = np.hstack([eye_s[s], eye_a[a]])
    x_next = np.stack([np.hstack([eye_s[s2], np.tile(eye_a[b], (n, 1))]) for b in range(n_a)], 1)
    data = Transitions.from_gamma(x, r, x_next, gamma, done, np.full((n, n_a), 1 / n_a))
    model = tdntk.TDNTK(NET, data, Schedule(1e-7, SoftTarget(1.0)))  # t = inf: any rate
    assert model.reduced.p <= 64 and model.reduced.inputs.shape[0] <= n_s * n_a
    records = list(zip(s, a, r, s2, done, strict=True))
    x_pairs, q_true = empirical_mdp_values(records, n_s, n_a, gamma)
    q = model.predict(x_pairs, np.inf, full_cov=False).mean[0]
    np.testing.assert_allclose(q, q_true, rtol=1e-7, atol=1e-9)
