"""The matrix-free route against the dense route, and its kernel products.

Independent routes: the dense closed form (one eigendecomposition), the kernel
matrices of `MLP.kernels`, one device against four forced CPU devices, and the
Loewner order of projected inverses for the low-rank covariance.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from conftest import make_problem
from test_reduced import repeated_problem

import tdntk
from tdntk import Schedule, SoftTarget
from tdntk.reduced import reduce_transitions
from tdntk.solvers import choice
from tdntk.solvers.choice import Krylov
from tdntk.solvers.kernel_products import KernelProducts
from tdntk.solvers.krylov import BellmanPreconditioner, ConvergenceWarning, KrylovSolver

NET = tdntk.MLP(depth=2, width=512)
TIMES = [0.0, 2.0, 150.0, 4000.0, np.inf]


@pytest.mark.parametrize(
    "target, time",
    [(None, "continuous"), (None, "discrete"), (SoftTarget(0.3), "continuous"),
     (SoftTarget(0.3), "discrete"), (SoftTarget(0.0), "continuous")],
)  # fmt: skip
def test_krylov_equals_dense(target, time):
    """Repeated transitions, a stochastic policy (k = 2) and terminal transitions; the
    projection at full rank, so the covariance is exact too (round-off only)."""
    data, x_test = repeated_problem(seed=4)
    schedule = Schedule(0.01, target, time=time)
    dense = tdntk.TDNTK(NET, data, schedule, solver="dense").predict(x_test, TIMES)
    model = tdntk.TDNTK(NET, data, schedule, solver=Krylov(tol=1e-11, rank=10_000))
    krylov = model.predict(x_test, TIMES)
    assert model.solver.name == "krylov" and all(s["converged"] for s in model.solver.report.solves)
    scale = np.abs(dense.mean).max()
    # the Krylov answers stop at relative changes of 1e-11: allow 1e-8 of the scale
    np.testing.assert_allclose(krylov.mean, dense.mean, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(krylov.cov, dense.cov, rtol=0, atol=1e-9 * np.abs(dense.cov).max())


def _trajectory_problem(n: int, seed: int = 0):
    """SARSA data from random-walk trajectories, reward 1, gamma 0.99: chains of ~50
    bootstrapping steps, where restarted GMRES stalls (its residual stays at ~1)."""
    rng = np.random.default_rng(seed)
    state = rng.normal(size=(n + 1, 4)).cumsum(axis=0) * 0.05
    x = np.hstack([state, np.eye(2)[rng.integers(0, 2, n + 1)]])
    ends = rng.random(n) < 0.02
    data = tdntk.Transitions.from_gamma(x[:n], np.ones(n), x[1:], 0.99, terminated=ends)
    return data, x[rng.choice(n, 40, replace=False)]


def test_td_fixed_point_on_long_bootstrapping_chains():
    """t = inf of TD on trajectory data equals the dense route's and satisfies the averaged
    Bellman equation at the data (independent check: Q(x) - r - gamma Q(x') = 0 where the
    next input is the next transition's input)."""
    data, x_test = _trajectory_problem(600)
    schedule = Schedule(1e-4, SoftTarget(1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tdntk.LearningRateWarning)
        dense = tdntk.TDNTK(NET, data, schedule, solver="dense").predict(x_test, np.inf)
        model = tdntk.TDNTK(NET, data, schedule, solver=Krylov(tol=1e-9, rank=128))
        krylov = model.predict(np.vstack([x_test, data.x]), np.inf, full_cov=False)
    solve = model.solver.report.solves[-1]
    assert solve["converged"] and solve["method"] == "GMRES (Bellman preconditioner)", solve
    q_test, q_data = krylov.mean[0, :40], krylov.mean[0, 40:]
    scale = np.abs(dense.mean).max()
    np.testing.assert_allclose(q_test, dense.mean[0], rtol=0, atol=1e-6 * scale)
    residual = q_data[:-1] - 1.0 - data.discount[:-1] * q_data[1:]
    assert np.abs(residual).max() < 1e-5 * scale, np.abs(residual).max()


def test_the_bellman_preconditioner_inverts_the_td_system_when_its_factor_is_exact():
    """With F F^T = Theta_YY exactly, P = Lc (F F^T + s I) L^T is built from dense
    matrices independently; the sparse LU + Woodbury route must invert it."""
    data, _ = _trajectory_problem(150, seed=3)
    red = reduce_transitions(data, td=True)
    _, theta = NET.kernels(red.inputs)
    values, vectors = np.linalg.eigh(theta)
    factor = vectors * np.sqrt(np.maximum(values, 0.0))
    shift = 1e-3
    lc, load = _dense(red.cov_load), _dense(red.load)
    p_matrix = lc @ (theta + shift * np.eye(theta.shape[0])) @ load.T
    x = np.random.default_rng(0).normal(size=red.p)
    precondition = BellmanPreconditioner(red.cov_load, red.load, factor, shift)
    np.testing.assert_allclose(precondition(p_matrix @ x), x, rtol=0, atol=1e-8 * np.abs(x).max())


def test_the_bellman_preconditioner_cuts_the_kernel_products(monkeypatch):
    """GMRES with the Bellman preconditioner needs at most half the products of BiCGStab
    preconditioned by the factor of A alone, for the same fixed point."""
    data, x_test = _trajectory_problem(600, seed=1)
    schedule = Schedule(1e-4, SoftTarget(1.0))
    models = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tdntk.LearningRateWarning)
        for name in ("bellman", "bicgstab"):
            if name == "bicgstab":
                monkeypatch.setattr(KrylovSolver, "_bellman_preconditioner", lambda self: None)
            model = tdntk.TDNTK(NET, data, schedule, solver=Krylov(tol=1e-9, rank=128))
            models[name] = (model.predict(x_test, np.inf).mean, model.solver.report.solves[-1])
    (q_b, solve_b), (q_c, solve_c) = models["bellman"], models["bicgstab"]
    assert solve_b["method"].startswith("GMRES") and solve_c["method"] == "BiCGStab"
    assert solve_b["converged"] and solve_c["converged"]
    assert solve_b["iterations"] <= 0.5 * solve_c["iterations"], (solve_b, solve_c)
    np.testing.assert_allclose(q_b, q_c, rtol=0, atol=1e-6 * np.abs(q_c).max())


def _dense(s) -> np.ndarray:
    out = np.zeros(s.shape)
    np.add.at(out, (s.rows, s.cols), s.vals)
    return out


def test_low_rank_covariance_is_conservative_for_regression():
    """gamma = 0 is kernel regression: the rank-k projection replaces Theta^+ by
    B (B^T Theta B)^+ B^T, which is smaller in the Loewner order, so at t = inf the
    variance can only be larger than the exact one; the mean stays exact."""
    data, x_test = tdntk.Transitions.from_gamma(*_regression(60), 0.0), _regression(60)[0][:9]
    schedule = Schedule(0.01, SoftTarget(1.0))
    dense = tdntk.TDNTK(NET, data, schedule, solver="dense").predict(x_test, np.inf)
    low = tdntk.TDNTK(NET, data, schedule, solver=Krylov(tol=1e-10, rank=12))
    pred = low.predict(x_test, np.inf)
    assert low.solver.report.rank == 12
    np.testing.assert_allclose(pred.mean, dense.mean, atol=1e-7 * np.abs(dense.mean).max())
    assert np.all(pred.var >= dense.var - 1e-10)
    assert np.mean(pred.var - dense.var) > 0  # and it is an approximation, not the answer


def _regression(n):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, 3))
    return x, np.sin(x[:, 0]), x  # x_next unused: gamma = 0


@pytest.mark.parametrize("cache_bytes", [0, None])
def test_kernel_products_equal_the_kernel_matrices(cache_bytes):
    rng = np.random.default_rng(1)
    y, x_test, v = rng.normal(size=(37, 4)), rng.normal(size=(5, 4)), rng.normal(size=(37, 3))
    products = KernelProducts(NET, y, cache_bytes=cache_bytes)
    assert products.cached == (cache_bytes is None)
    k, theta = NET.kernels(y)
    w = v[:, :2] ** 2
    theta_v, k_w = products(v, w)
    np.testing.assert_allclose(theta_v, theta @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(k_w, k @ w, rtol=1e-12, atol=1e-12)
    assert products(v)[1].shape == (37, 0)
    k_t, theta_t = NET.kernels(x_test, y)
    t_v, k_w = products.test(x_test, v, w)
    np.testing.assert_allclose(t_v, theta_t @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(k_w, k_t @ w, rtol=1e-12, atol=1e-12)


_SHARDED = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from test_reduced import repeated_problem
    import tdntk
    from tdntk.solvers.choice import Krylov
    assert jax.device_count() == 4, jax.devices()
    data, x_test = repeated_problem(seed=4)
    schedule = tdntk.Schedule(0.01, tdntk.SoftTarget(0.3))
    model = tdntk.TDNTK(tdntk.MLP(2, 512), data, schedule,
                        solver=Krylov(tol=1e-11, rank=10_000, cache_bytes=0))
    pred = model.predict(x_test, [150.0, np.inf])
    np.savez({path!r}, mean=pred.mean, var=pred.var)
    """
)


def test_streamed_products_over_four_devices_equal_one_device(tmp_path):
    path = tmp_path / "sharded.npz"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    script = _SHARDED.format(tests=os.path.dirname(__file__), path=str(path))
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    sharded = np.load(path)
    data, x_test = repeated_problem(seed=4)
    schedule = Schedule(0.01, SoftTarget(0.3))
    one = tdntk.TDNTK(NET, data, schedule, solver=Krylov(tol=1e-11, rank=10_000, cache_bytes=0))
    pred = one.predict(x_test, [150.0, np.inf])
    # the same per-block arithmetic on each device: round-off only
    np.testing.assert_allclose(sharded["mean"], pred.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sharded["var"], pred.var, rtol=1e-10, atol=1e-12)


def test_too_few_iterations_warn_and_never_return_a_plausible_number():
    data, x_test = make_problem(seed=2, n=30)
    model = tdntk.TDNTK(NET, data, Schedule(0.01),
                        solver=Krylov(tol=1e-12, rank=2, max_iterations=3))  # fmt: skip
    with pytest.warns(ConvergenceWarning, match="CG: stopped"):
        pred = model.predict(x_test, np.inf, full_cov=False)
    assert np.all(np.isnan(pred.mean))
    with pytest.warns(ConvergenceWarning, match="Lanczos: the answer still changes"):
        model.predict(x_test, 4000.0, full_cov=False)


def test_solver_choice_and_errors(monkeypatch):
    data, _ = repeated_problem(seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tdntk.TDNTK(NET, data, Schedule(0.01)).solver.name == "dense"  # fits
    monkeypatch.setattr(tdntk.predict, "default_cache_bytes", lambda: 10)  # nothing fits
    assert tdntk.TDNTK(NET, data, Schedule(0.01)).solver.name == "krylov"
    kern = tdntk.EmpiricalKernels(tdntk.MLP(1, 8), tdntk.MLP(1, 8).init(_key(), 3))
    assert tdntk.TDNTK(kern, data, Schedule(0.01)).solver.name == "dense"  # auto: not an MLP
    with pytest.raises(TypeError, match="solver='dense'"):
        tdntk.TDNTK(kern, data, Schedule(0.01), solver="krylov")
    with pytest.raises(ValueError, match="solver must be one of"):
        tdntk.TDNTK(NET, data, Schedule(0.01), solver="svd")
    with pytest.raises(ValueError, match="tol must lie in"):
        Krylov(tol=0.0)
    assert choice.dense_bytes(1000, 500, False) < choice.dense_bytes(1000, 500, True)


def _key():
    import jax

    return jax.random.PRNGKey(0)


def test_diverging_td_gives_nan_at_infinity_on_the_krylov_route_too():
    """The two-state chain of Tsitsiklis and Van Roy (test_fixed_points): TD diverges."""
    from test_fixed_points import LINEAR, two_state_chain

    data = two_state_chain(0.9)
    model = tdntk.TDNTK(LINEAR, data, Schedule(0.1, SoftTarget(0.5)), solver=Krylov(tol=1e-10))
    with pytest.warns(tdntk.DivergenceWarning, match="diverges"):
        pred = model.predict(np.array([[1.0], [2.0]]), [10.0, np.inf])
    dense = tdntk.TDNTK(LINEAR, data, Schedule(0.1, SoftTarget(0.5)), solver="dense")
    with pytest.warns(tdntk.DivergenceWarning):
        expected = dense.predict(np.array([[1.0], [2.0]]), 10.0)
    np.testing.assert_allclose(pred.mean[0], expected.mean[0], rtol=1e-9)
    assert np.all(np.isnan(pred.mean[1]))
