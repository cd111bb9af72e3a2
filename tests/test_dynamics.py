"""Closed-form TD dynamics against independent routes (issue 3, points 2-5).

The reference everywhere is the linearised network in *function space*: with
all inputs stacked, S = [X; X''; X*], gradient flow on the TD loss moves the
outputs by the NTK,

    single:  d/dt f = -eta (Theta_SX - Theta_SX'' (GP)^T) delta,
    target:  d/dt f = -eta Theta_SX delta,   d/dt f_bar = tau (f - f_bar),
    delta = f(X) - r - GP f_bar(X'')   (f_bar = f for the single network),

integrated with scipy's solve_ivp or iterated step by step.  Nothing of
tdntk.dynamics is used by the references (GP is built densely here).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
from conftest import make_problem

import tdntk
from tdntk import Schedule, SoftTarget
from tdntk.solvers import dense

LR = 0.05


def dense_gp(data):
    """(n, n k) matrix G P built entry by entry."""
    gp = np.zeros((data.n, data.n * data.k))
    for i in range(data.n):
        for j in range(data.k):
            gp[i, i * data.k + j] = data.discount[i] * data.next_weights[i, j]
    return gp


def stacked_ntk(net, data, x_test):
    s = np.concatenate([data.x, data.x_next_flat, x_test])
    return net.kernels(s, s)


def reference_rhs(net, data, x_test, lr, tau):
    """Right-hand side of the function-space ODE on [f; f_bar] (or f alone)."""
    _, theta = stacked_ntk(net, data, x_test)
    n, nk = data.n, data.n * data.k
    gp = dense_gp(data)
    drive = theta[:, :n] if tau is not None else theta[:, :n] - theta[:, n : n + nk] @ gp.T
    size = theta.shape[0]

    def rhs(_, y):
        f = y[:size]
        f_bar = y[size:] if tau is not None else f
        delta = f[:n] - data.reward - gp @ f_bar[n : n + nk]
        df = -lr * drive @ delta
        return df if tau is None else np.concatenate([df, tau * (f - f_bar)])

    return rhs, size


def reference_continuous(net, data, x_test, q0, lr, tau, times):
    rhs, size = reference_rhs(net, data, x_test, lr, tau)
    y0 = q0 if tau is None else np.concatenate([q0, q0])
    sol = scipy.integrate.solve_ivp(
        rhs, (0, max(times)), y0, method="Radau", t_eval=times, rtol=1e-12, atol=1e-13
    )
    assert sol.success
    return sol.y[size - x_test.shape[0] : size].T  # (T, m)


def reference_discrete(net, data, x_test, q0, lr, tau, steps):
    """Iterate the linearised GD (and soft update, eq. 12) in function space."""
    _, theta = stacked_ntk(net, data, x_test)
    n, nk = data.n, data.n * data.k
    gp = dense_gp(data)
    drive = theta[:, :n] if tau is not None else theta[:, :n] - theta[:, n : n + nk] @ gp.T
    f, f_bar = q0.copy(), q0.copy()
    out = {}
    for k in range(max(steps) + 1):
        if k in steps:
            out[k] = f[-x_test.shape[0] :].copy()
        bootstrap = f_bar if tau is not None else f
        delta = f[:n] - data.reward - gp @ bootstrap[n : n + nk]
        f = f - lr * drive @ delta
        if tau is not None:
            f_bar = (1 - tau) * f_bar + tau * f
    return np.array([out[k] for k in steps])


def random_init_outputs(data, x_test, seed=1):
    rng = np.random.default_rng(seed)
    q0 = rng.normal(size=data.n + data.n * data.k + x_test.shape[0])
    n, nk = data.n, data.n * data.k
    return q0, q0[:n], q0[n : n + nk], q0[n + nk :]


@pytest.mark.parametrize("tau", [None, 0.0, 0.1, 1.0])
def test_continuous_matches_ode_integration(net, problem, tau):
    # Terminal transitions and a stochastic policy (k = 2) are in `problem`.
    data, x_test = problem
    times = [1.0, 100.0, 1e4]
    target = None if tau is None else SoftTarget(tau)
    model = tdntk.TDNTK(net, data, Schedule(LR, target))
    q0, q0_x, q0_next, q0_test = random_init_outputs(data, x_test)
    closed = model.predict_from_init(x_test, times, q0_test, q0_x, q0_next)
    ref = reference_continuous(net, data, x_test, q0, LR, tau, times)
    rel = np.abs(closed - ref).max(axis=1) / np.abs(ref).max(axis=1)
    assert rel.max() < 1e-6, rel  # issue 3: relative error < 1e-6


@pytest.mark.parametrize("tau", [None, 0.0, 0.1, 1.0])
def test_discrete_matches_step_by_step_iteration(net, problem, tau):
    data, x_test = problem
    steps = [0, 1, 2, 7, 64, 300]
    target = None if tau is None else SoftTarget(tau)
    model = tdntk.TDNTK(net, data, Schedule(LR, target, time="discrete"))
    q0, q0_x, q0_next, q0_test = random_init_outputs(data, x_test)
    closed = model.predict_from_init(x_test, steps, q0_test, q0_x, q0_next)
    ref = reference_discrete(net, data, x_test, q0, LR, tau, steps)
    np.testing.assert_allclose(closed, ref, rtol=1e-9, atol=1e-9)  # round-off only


def lee_et_al_regression(net, x, y, x_test, lr, t):
    """Supervised NTK regression (Lee et al. 2019, eq. 9-10 there), in a few lines."""
    k_all, th_all = net.kernels(np.concatenate([x, x_test]))
    n = x.shape[0]
    k_xx, k_tx, k_tt = k_all[:n, :n], k_all[n:, :n], k_all[n:, n:]
    th_xx, th_tx = th_all[:n, :n], th_all[n:, :n]
    decay = np.eye(n) - scipy.linalg.expm(-lr * th_xx * t)
    z = th_tx @ np.linalg.solve(th_xx, decay)
    return z @ y, k_tt - z @ k_tx.T - k_tx @ z.T + z @ k_xx @ z.T


@pytest.mark.parametrize("target", [None, SoftTarget(0.3)])
def test_gamma_zero_is_supervised_ntk_regression(net, target):
    data, x_test = make_problem(gamma=0.0, k=1, n=10)
    model = tdntk.TDNTK(net, data, Schedule(LR, target))
    times = [0.5, 10.0, 300.0]
    pred = model.predict(x_test, times)
    for i, t in enumerate(times):
        mean, cov = lee_et_al_regression(net, data.x, data.reward, x_test, LR, t)
        np.testing.assert_allclose(pred.mean[i], mean, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(pred.cov[i], cov, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("tau", [None, 0.2])
def test_ensemble_moments_follow_from_the_linear_map(net, problem, tau):
    """mean = Z r and cov = L K L^T for Q_t* = L [Q0*; Q0; Q0''] + Z r (theory page, (*))."""
    data, x_test = problem
    target = None if tau is None else SoftTarget(tau)
    model = tdntk.TDNTK(net, data, Schedule(LR, target))
    n, nk, m = data.n, data.n * data.k, x_test.shape[0]
    t = 50.0
    zero = np.zeros
    z_r = model.predict_from_init(x_test, t, zero(m), zero(n), zero(nk))[0]
    # column j of Z from the response to a unit change of Q0(X)_j (Z is validated by the ODE test)
    z = np.stack(
        [
            model.predict_from_init(x_test, t, zero(m), -np.eye(n)[j], zero(nk))[0] - z_r
            for j in range(n)
        ],
        axis=1,
    )
    linear_map = np.hstack([-z, z @ dense_gp(data), np.eye(m)])  # acts on [Q0; Q0''; Q0*]
    k_joint, _ = stacked_ntk(net, data, x_test)
    pred = model.predict(x_test, t)
    np.testing.assert_allclose(pred.mean[0], z_r, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pred.cov[0], linear_map @ k_joint @ linear_map.T, atol=1e-10)


@pytest.mark.parametrize("tau", [None, 0.05, 0.0])
def test_infinite_time_is_the_long_time_limit(net, problem, tau):
    data, x_test = problem
    target = None if tau is None else SoftTarget(tau)
    model = tdntk.TDNTK(net, data, Schedule(LR, target))
    pred = model.predict(x_test, [1e6, np.inf])
    np.testing.assert_allclose(pred.mean[0], pred.mean[1], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(pred.cov[0], pred.cov[1], rtol=1e-6, atol=1e-9)


def test_single_network_fixed_point_satisfies_bellman_on_data(net, problem):
    """At t = inf the single network's TD error on the data vanishes (eq. 31)."""
    data, _ = problem
    model = tdntk.TDNTK(net, data, Schedule(LR))
    q = model.predict(data.x, np.inf).mean[0]
    q_next = model.predict(data.x_next_flat, np.inf).mean[0]
    np.testing.assert_allclose(q, data.reward + data.bellman(q_next), atol=1e-6)


@pytest.mark.parametrize("target", [None, SoftTarget(0.1)])
def test_covariances_symmetric_psd_float64(net, problem, target):
    data, x_test = problem
    pred = tdntk.TDNTK(net, data, Schedule(LR, target)).predict(x_test, [0, 3, 300, np.inf])
    assert pred.mean.dtype == pred.cov.dtype == np.float64
    assert pred.mean.shape == (4, x_test.shape[0]) and pred.cov.shape == (4, 5, 5)
    np.testing.assert_array_equal(pred.cov, np.swapaxes(pred.cov, 1, 2))
    scale = np.abs(pred.cov).max()
    assert np.linalg.eigvalsh(pred.cov).min() > -1e-9 * scale
    np.testing.assert_allclose(pred.var, np.diagonal(pred.cov, axis1=1, axis2=2))
    # at t = 0 the ensemble is the prior: mean 0, covariance the NNGP kernel
    np.testing.assert_allclose(pred.mean[0], 0.0)
    np.testing.assert_allclose(pred.cov[0], net.kernels(x_test)[0], rtol=1e-12)


@pytest.mark.parametrize("target", [None, SoftTarget(0.1)])
def test_variance_only_equals_diagonal_of_full_covariance(net, problem, target):
    data, x_test = problem
    model = tdntk.TDNTK(net, data, Schedule(LR, target))
    full = model.predict(x_test, [2.0, 40.0])
    diag = model.predict(x_test, [2.0, 40.0], full_cov=False)
    assert diag.cov is None
    np.testing.assert_allclose(diag.var, full.var, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(diag.mean, full.mean, rtol=1e-12)


@pytest.mark.parametrize("time", ["continuous", "discrete"])
def test_doubling_grid_reuse_equals_fresh_computation(net, problem, time):
    """Squaring cached exponentials (E_2t = E_t^2) agrees with computing each t afresh."""
    data, x_test = problem
    grid = 2.0 ** np.arange(0, 11)
    shuffled = np.concatenate([[np.inf, 0.0], grid[::-1], [3.0, 6.0]])
    model = tdntk.TDNTK(net, data, Schedule(LR, SoftTarget(0.1), time=time))
    together = model.predict(x_test, shuffled)
    for i, t in enumerate(shuffled):
        fresh = tdntk.TDNTK(net, data, Schedule(LR, SoftTarget(0.1), time=time))
        alone = fresh.predict(x_test, t)
        np.testing.assert_allclose(together.mean[i], alone.mean[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(together.cov[i], alone.cov[0], rtol=1e-8, atol=1e-12)


def test_mean_loss_is_sum_loss_with_rate_over_n(net, problem):
    data, x_test = problem
    a = tdntk.TDNTK(net, data, Schedule(LR, loss="mean")).predict(x_test, [5.0, 80.0])
    b = tdntk.TDNTK(net, data, Schedule(LR / data.n)).predict(x_test, [5.0, 80.0])
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
    np.testing.assert_allclose(a.cov, b.cov, rtol=1e-10, atol=1e-14)


def test_one_hot_stochastic_policy_equals_deterministic(net):
    data, x_test = make_problem(k=3)
    pick = np.array([i % 3 for i in range(data.n)])
    one_hot = np.eye(3)[pick]
    stochastic = tdntk.Transitions(data.x, data.reward, data.x_next, data.discount, one_hot)
    deterministic = tdntk.Transitions(
        data.x, data.reward, data.x_next[np.arange(data.n), pick], data.discount
    )
    for target in (None, SoftTarget(0.5)):
        a = tdntk.TDNTK(net, stochastic, Schedule(LR, target)).predict(x_test, [3.0, np.inf])
        b = tdntk.TDNTK(net, deterministic, Schedule(LR, target)).predict(x_test, [3.0, np.inf])
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(a.cov, b.cov, rtol=1e-6, atol=1e-9)


def test_critical_learning_rate_is_eq_11(net, problem):
    data, _ = problem
    model = tdntk.TDNTK(net, data, Schedule(LR))
    s = np.concatenate([data.x, data.x_next_flat])
    _, theta = net.kernels(s)
    d = np.hstack([np.eye(data.n), -dense_gp(data)])
    evals = np.linalg.eigvalsh(d @ theta @ d.T)  # Theta_bar = D D^T in kernel form (eq. 9)
    assert model.critical_learning_rate == pytest.approx(2 / (evals[-1] + evals[0]), rel=1e-9)


def test_learning_rate_above_critical_warns(net, problem):
    data, _ = problem
    crit = tdntk.TDNTK(net, data, Schedule(LR)).critical_learning_rate
    with warnings.catch_warnings():  # just below the rate: silent (warnings come with .dynamics)
        warnings.simplefilter("error")
        _ = tdntk.TDNTK(net, data, Schedule(0.99 * crit)).dynamics
        _ = tdntk.TDNTK(net, data, Schedule(0.99 * crit, time="discrete")).dynamics
    with pytest.warns(tdntk.LearningRateWarning, match="critical rate"):
        _ = tdntk.TDNTK(net, data, Schedule(1.01 * crit)).dynamics
    with (
        pytest.warns(tdntk.LearningRateWarning, match="diverges"),
        pytest.warns(tdntk.DivergenceWarning, match="eta l_max"),
    ):
        _ = tdntk.TDNTK(net, data, Schedule(10 * crit, time="discrete")).dynamics


@pytest.mark.parametrize("target", [None, SoftTarget(0.1)])
def test_row_blocks_of_test_inputs_change_nothing(net, problem, target, monkeypatch):
    data, x_test = problem
    model = tdntk.TDNTK(net, data, Schedule(LR, target))
    whole = model.predict(x_test, [3.0, np.inf])
    monkeypatch.setattr(dense, "TEST_BLOCK_ROWS", 2)  # 5 test inputs -> 3 blocks
    blocked = model.predict(x_test, [3.0, np.inf])
    np.testing.assert_allclose(blocked.mean, whole.mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(blocked.cov, whole.cov, rtol=1e-12, atol=1e-14)
