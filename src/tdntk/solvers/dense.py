"""The dense route: kernels on the distinct inputs as device matrices, one eigendecomposition.

In the reduced coordinates of `tdntk.reduced` (p groups, N distinct inputs):

* build once: K_YY and Theta_YY (N, N); the driving kernel ``L Theta L^T``
  (and ``N Theta L^T`` for TD) factorised by `tdntk.dynamics.driving_spectrum`
  (one ``eigh`` of p x p); ``Kbar = Lc K Lc^T`` and the rewards, both in the
  eigenbasis Q (p, r);
* per block of test inputs: ``Theta_*Y L^T Q`` (m, r) and ``C = Q^T Lc K_Y*`` (r, m);
* per time t: ``coef = Z_t Q`` from `tdntk.dynamics.TDDynamics`, then
  ``mean = coef Q^T r`` and the covariance (eq. 52) from two matrix products,
  ``G = Kbar coef^T / 2 - C`` and ``cov = K** + coef G + (coef G)^T``.

Everything runs in float64 JAX arrays on the default device (a local
``jax.enable_x64`` scope). Peak memory: two N x N kernels and a few p x p matrices.

Shapes: n transitions, N distinct inputs, p groups, r range, m test inputs, T times.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..dynamics import Schedule, Spectrum, TDDynamics, driving_spectrum, x64
from ..reduced import Reduced, Sparse

__all__ = ["DenseSolver", "TEST_BLOCK_ROWS", "spectrum_from_ntk"]

log = logging.getLogger("tdntk.solvers")

# Rows of x_test per kernel call: bounds the raw (rows, N) kernel blocks.
TEST_BLOCK_ROWS = 2048

DeviceKernelFn = Callable[[np.ndarray, np.ndarray], tuple[jax.Array, jax.Array]]


@x64
def spectrum_from_ntk(ntk, reduced: Reduced) -> Spectrum:
    """The driving kernel's `Spectrum` from the NTK on the distinct inputs (N, N)."""
    boot = _sparse_args(reduced.bootstrap) if reduced.bootstrap is not None else None
    driving, boot_p = _driving(jnp.asarray(ntk), _sparse_args(reduced.load), boot, reduced.p)
    return driving_spectrum(driving, boot_p, reduced.n)


def _sparse_args(s: Sparse) -> tuple:
    """(rows, cols, vals) of a `Sparse` as device arrays (its row count is passed apart)."""
    return (jnp.asarray(s.rows), jnp.asarray(s.cols), jnp.asarray(s.vals))


@functools.partial(jax.jit, static_argnames=("p",))
def _driving(ntk, load, boot, p):
    """(``L Theta L^T``, ``N Theta L^T`` or None), both (p, p)."""
    theta_lt = _apply(load, ntk, p).T  # Theta L^T (N, p); Theta is symmetric
    return _apply(load, theta_lt, p), (None if boot is None else _apply(boot, theta_lt, p))


def _apply(sparse: tuple, m, p: int):
    """``S m`` for S (p, N) given as (rows, cols, vals): (N, ...) -> (p, ...)."""
    rows, cols, vals = sparse
    return jax.ops.segment_sum(vals[:, None].astype(m.dtype) * m[cols], rows, p)


class DenseSolver:
    """The dense closed form of one estimator on one dataset (module docstring).

    Args:
        kernel_fn: ``(x1 (n1, d), x2 (n2, d)) -> (nngp, ntk)`` as float64 device arrays.
        reduced: the data in reduced coordinates (`tdntk.reduced.reduce_transitions`).
        reward: (n,) the rewards.
    """

    name = "dense"

    @x64
    def __init__(self, kernel_fn: DeviceKernelFn, reduced: Reduced, reward: np.ndarray):
        self.kernel_fn = kernel_fn
        self.reduced = reduced
        tick = time.perf_counter()
        nngp, ntk = kernel_fn(reduced.inputs, reduced.inputs)
        self.spectrum = spectrum_from_ntk(ntk, reduced)
        log.info(
            "dense route: kernels on %d distinct inputs, eigh of %d x %d (%.1f s)",
            reduced.inputs.shape[0], reduced.p, reduced.p, time.perf_counter() - tick,
        )  # fmt: skip
        del ntk
        self._load, self._cov = _sparse_args(reduced.load), _sparse_args(reduced.cov_load)
        self.kbar, self.reward = _project(
            nngp, self._cov, self.spectrum.basis, jnp.asarray(reduced.coords(reward)), reduced.p
        )

    def dynamics(self, schedule: Schedule) -> TDDynamics:
        return TDDynamics(self.spectrum, schedule)

    @x64
    def test_terms(self, x_test: np.ndarray) -> tuple[jax.Array, jax.Array]:
        """(test kernel ``Theta_*Y L^T Q`` (m, r), ``C = Q^T Lc K_Y*`` (r, m)), in row blocks."""
        kern, c = [], []
        for start in range(0, x_test.shape[0], TEST_BLOCK_ROWS):
            nngp, ntk = self.kernel_fn(x_test[start : start + TEST_BLOCK_ROWS], self.reduced.inputs)
            k_b, c_b = _test_terms(
                nngp, ntk, self._load, self._cov, self.spectrum.basis, self.reduced.p
            )
            kern.append(k_b)
            c.append(c_b)
        return jnp.concatenate(kern), jnp.concatenate(c, axis=1)

    @x64
    def moments(self, dynamics: TDDynamics, x_test, times, prior, full_cov: bool):
        """Mean (T, m), variance (T, m) and covariance (T, m, m) or None at `times` (eq. 52).

        Args:
            prior: K** (m, m) when `full_cov`, else its diagonal (m,).
        """
        test_kernel, c = self.test_terms(x_test)
        prior = jnp.asarray(prior)
        m = x_test.shape[0]
        mean, var = np.empty((times.size, m)), np.empty((times.size, m))
        cov = np.empty((times.size, m, m)) if full_cov else None
        for i in np.argsort(times, kind="stable"):
            coef = dynamics.z_coefficients(test_kernel, float(times[i]))
            if full_cov:
                mean_i, cov_i = _moments_full(coef, self.reward, self.kbar, c, prior)
                mean[i], cov[i] = np.asarray(mean_i), np.asarray(cov_i)
                var[i] = np.diag(cov[i])
            else:
                mean_i, var_i = _moments_var(coef, self.reward, self.kbar, c, prior)
                mean[i], var[i] = np.asarray(mean_i), np.asarray(var_i)
        return mean, var, cov

    @x64
    def from_init(self, dynamics: TDDynamics, x_test, times, residual_c) -> np.ndarray:
        """``Z_t (r - Q0(X) + G P Q0(X''))`` (T, m) for the reduced residual (p,) (eq. 8/15)."""
        test_kernel, _ = self.test_terms(x_test)
        residual = self.spectrum.basis.T @ jnp.asarray(residual_c)
        return np.stack(
            [np.asarray(dynamics.z_coefficients(test_kernel, float(t)) @ residual) for t in times]
        )


@jax.jit
def _moments_full(coef, reward, kbar, c, prior):
    """Mean (m,) and covariance (m, m) from two matrix products (module docstring)."""
    zg = coef @ (0.5 * (kbar @ coef.T) - c)
    return coef @ reward, prior + zg + zg.T


@jax.jit
def _moments_var(coef, reward, kbar, c, prior):
    """Mean (m,) and variance (m,) in O(m r) memory: the diagonal of ``coef G`` only."""
    g = 0.5 * (kbar @ coef.T) - c
    return coef @ reward, prior + 2.0 * jnp.einsum("mr,rm->m", coef, g)


@functools.partial(jax.jit, static_argnames=("p",))
def _project(nngp, cov_load, basis, reward_c, p):
    """(``Q^T Lc K Lc^T Q`` (r, r), ``Q^T U^T r`` (r,))."""
    kbar = _apply(cov_load, _apply(cov_load, nngp, p).T, p)
    return basis.T @ kbar @ basis, basis.T @ reward_c


@functools.partial(jax.jit, static_argnames=("p",))
def _test_terms(nngp, ntk, load, cov_load, basis, p):
    """(``Theta_*Y L^T Q`` (m, r), ``Q^T Lc K_Y*`` (r, m)) for one block of test inputs."""
    return _apply(load, ntk.T, p).T @ basis, basis.T @ _apply(cov_load, nngp.T, p)
