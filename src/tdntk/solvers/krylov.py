"""The matrix-free route: the closed form from kernel-vector products only.

The kernels on the N distinct inputs are touched only through
`KernelProducts` (row blocks, all devices; cached when they fit). In the
reduced coordinates of `tdntk.reduced` (p groups):

* **Mean, residual gradient** (driving kernel ``H = L Theta L^T``, PSD):
  ``f_t(H) U^T r`` for every requested t from one Lanczos basis
  (`matfree.decomp.tridiag_sym`, full reorthogonalisation): the filter f_t of
  `tdntk.dynamics` applied to the Ritz values. t = inf: ``H^+ U^T r`` by
  conjugate gradients (`lineax.CG`) preconditioned with a pivoted partial
  Cholesky factor ``H ~ F F^T`` (greedy pivots on the diagonal, stopped at the
  numerical rank; Woodbury: ``(F F^T + s I)^-1``, s the largest diagonal left).
* **Mean, TD** (``A = L Theta L^T``, ``S = N Theta L^T``): the forced
  solution ``t phi_1(t M) [eta U^T r; 0]`` of the generator M (2p) from one
  Arnoldi basis (`matfree.decomp.hessenberg`), phi_1 of the small Hessenberg
  matrix by the augmented exponential with squaring; discrete time: the sum
  of powers of the step map of eq. 12 the same way. t = inf: restarted GMRES
  (SciPy's, on the host; the products on the devices) on the projected system
  ``(A - S) a = U^T r`` (theory page: the minimum-norm TD fixed point) with the
  `BellmanPreconditioner` ``Lc (F F^T + s I) L^T``: the kernel on the distinct
  inputs replaced by a pivoted partial Cholesky factor F, which leaves the
  sparse tabular Bellman operator of the data (sparse LU) plus a rank-k term
  (Woodbury). It keeps the long chains of bootstrapping of trajectory data
  that a factor of A alone misses (measured: 195 kernel products at 10^4
  CartPole transitions where BiCGStab preconditioned by the factor of A took
  1,378). Where it cannot be built (a singular tabular part) or stalls:
  BiCGStab (`lineax.BiCGStab`) preconditioned by the factor of A, then
  restarted GMRES (`lineax.GMRES`), each from where the last stopped.
  Each Krylov basis grows (doubling) until the answer changes by less than
  `tol` relative between its last two sizes; CG and GMRES stop at relative
  residual `tol`. Iterations and residuals are reported (`KrylovReport`).
* **Covariance**: a rank-k Galerkin projection of the dynamics onto the span
  B of the pivoted partial Cholesky factor F (the k most informative groups,
  like inducing points): the dense formulas of `tdntk.solvers.dense` on
  ``B^T H B``, ``B^T S B``, ``B^T Kbar B`` and the test terms ``Theta_*Y L^T B``,
  ``B^T Lc K_Y*``; exact when k = p (tested against the dense route, its error
  at smaller k measured in ``benchmarks/bench_scale.py``). The critical
  learning rate and the stability check of TD come from this projection too.

Shapes: n transitions, N distinct inputs, p groups, k projection rank,
m test inputs, T times.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import scipy.linalg
from matfree import decomp

from ..dynamics import Schedule, TDDynamics, driving_spectrum, x64
from ..nets import MLP, _kernel_recursion
from ..reduced import Reduced, Sparse
from .choice import BELLMAN_RANK
from .dense import _moments_full, _moments_var
from .kernel_products import KernelProducts, ProductSpec, backend_jit, kernel_products

__all__ = ["KrylovSolver", "KrylovReport", "ConvergenceWarning"]

# Stage messages (kernel passes, each solve's iterations and residual) go to this logger;
# the `tdntk` command shows them, a library user can with ``logging.basicConfig(level=INFO)``.
log = logging.getLogger("tdntk.solvers")


class ConvergenceWarning(UserWarning):
    """A Krylov method stopped before reaching its tolerance (the result says how far it got)."""


@dataclass
class KrylovReport:
    """What the matrix-free route did, for the summary of a run.

    Attributes:
        tolerance: the relative tolerance asked for.
        rank: k, the rank of the Galerkin projection (covariance, critical rate, stability).
        cached: whether both kernels were kept in device memory.
        solves: one entry per solve: {"method", "iterations", "residual" (or
            "change"), "converged"}.
    """

    tolerance: float
    rank: int
    cached: bool
    solves: list = dataclasses.field(default_factory=list)

    @property
    def iterations(self) -> int:
        """Kernel products (matrix-vector iterations) made by the solves so far."""
        return int(sum(s["iterations"] for s in self.solves))


def _padded_rows(s: Sparse) -> tuple[np.ndarray, np.ndarray]:
    """(index (p, q), weight (p, q)): the non-zeros of each row, padded with weight 0."""
    counts = np.bincount(s.rows, minlength=s.shape[0])
    q = max(int(counts.max()) if counts.size else 1, 1)
    index, weight = np.zeros((s.shape[0], q), np.int64), np.zeros((s.shape[0], q))
    order = np.argsort(s.rows, kind="stable")
    slot = np.arange(order.size) - np.repeat(np.cumsum(counts) - counts, counts)
    index[s.rows[order], slot] = s.cols[order]
    weight[s.rows[order], slot] = s.vals[order]
    return index, weight


class KrylovSolver:
    """The matrix-free closed form of one estimator on one dataset (module docstring).

    Args:
        kernels: the `MLP`.
        reduced: the data in reduced coordinates.
        reward: (n,) the rewards.
        tol: relative tolerance of every Krylov solve.
        rank: k, the rank of the Galerkin projection (capped at p).
        cache_bytes: see `KernelProducts`.
        max_iterations: cap on the size of a Krylov basis / CG and GMRES steps.
    """

    name = "krylov"

    @x64
    def __init__(
        self,
        kernels: MLP,
        reduced: Reduced,
        reward: np.ndarray,
        tol: float = 1e-8,
        rank: int = 256,
        cache_bytes: int | None = None,
        max_iterations: int = 2048,
    ):
        if not 0 < tol < 1:
            raise ValueError(f"tol must lie in (0, 1), got {tol!r}")
        tick = time.perf_counter()
        self.products = KernelProducts(kernels, reduced.inputs, cache_bytes)
        log.info(
            "matrix-free route: %d distinct inputs, %d coordinates; kernels %s (%.1f s)",
            reduced.inputs.shape[0], reduced.p,
            "cached in memory" if self.products.cached else "streamed in row blocks",
            time.perf_counter() - tick,
        )  # fmt: skip
        self.reduced = reduced
        self.tol = float(tol)
        self.max_iterations = int(max_iterations)
        self.reward_c = jnp.asarray(reduced.coords(reward))
        self._mean_cache: dict = {}
        self._bellman = None
        self._ops = _Ops(self.products.spec, reduced.p, reduced.inputs.shape[0])
        self.state = {
            "products": self.products.state,
            "load": _triplet(reduced.load),
            "boot": None if reduced.bootstrap is None else _triplet(reduced.bootstrap),
            "cov": _triplet(reduced.cov_load),
            "rows": tuple(jnp.asarray(a) for a in _padded_rows(reduced.load)),
            "support": jnp.asarray(np.unique(reduced.load.cols)),
        }
        rank = min(int(rank), reduced.p, reduced.inputs.shape[0])
        tick = time.perf_counter()
        self._factor, self._shift = _pivoted_cholesky(self._ops, rank, self.state)
        log.info("pivoted partial Cholesky: rank %d of %d asked (%.1f s)",
                 self._factor.shape[1], rank, time.perf_counter() - tick)  # fmt: skip
        self.basis = jnp.linalg.qr(self._factor)[0]  # B (p, k)
        self.report = KrylovReport(self.tol, int(self.basis.shape[1]), self.products.cached)
        self._project()

    # ------------------------------------------------------------------ the projection
    def _project(self):
        """The Galerkin system on span B: spectrum, Kbar and rewards in its eigenbasis."""
        red, b, ops = self.reduced, self.basis, self._ops
        k = b.shape[1]
        tick = time.perf_counter()
        theta_lb, k_cb = self.products(ops.lt(self.state, b), ops.ct(self.state, b))
        self.report.solves.append({"method": "projection pass", "iterations": 1, "converged": True})
        log.info("projection pass (2 x %d right-hand sides): %.1f s", k,
                 time.perf_counter() - tick)  # fmt: skip
        driving = b.T @ ops.l(self.state, theta_lb)
        boot = None if red.bootstrap is None else b.T @ ops.n(self.state, theta_lb)
        spectrum = driving_spectrum(driving, boot, red.n)
        if k < red.p:  # the p - k eigenvalues left out are >= 0: eq. 11 sees l_min = 0
            spectrum = dataclasses.replace(
                spectrum, eigenvalues=jnp.concatenate([jnp.zeros(1), spectrum.eigenvalues])
            )
        self.spectrum = spectrum
        self._q = b @ spectrum.basis  # (p, r): the Galerkin eigenbasis in p-coordinates
        kbar = b.T @ ops.c(self.state, k_cb)
        self.kbar = spectrum.basis.T @ kbar @ spectrum.basis
        self.reward = self._q.T @ self.reward_c

    def dynamics(self, schedule: Schedule) -> TDDynamics:
        """The `TDDynamics` of the Galerkin system (covariance, stability, critical rate)."""
        return TDDynamics(self.spectrum, schedule)

    # ------------------------------------------------------------------ predictions
    @x64
    def test_terms(self, x_test):
        """(``Theta_*Y L^T Q`` (m, r), ``Q^T Lc K_Y*`` (r, m)) for the Galerkin basis Q."""
        ops, q = self._ops, self._q
        theta_w, k_w = self.products.test(x_test, ops.lt(self.state, q), ops.ct(self.state, q))
        return theta_w, k_w.T

    @x64
    def moments(self, dynamics: TDDynamics, x_test, times, prior, full_cov: bool):
        """Mean (T, m) by Krylov solves; variance / covariance from the Galerkin system."""
        test_kernel, c = self.test_terms(x_test)
        prior = jnp.asarray(prior)
        mean = self.from_init(dynamics, x_test, times, self.reward_c)
        m = x_test.shape[0]
        var = np.empty((times.size, m))
        cov = np.empty((times.size, m, m)) if full_cov else None
        for i, t in enumerate(times):
            coef = dynamics.z_coefficients(test_kernel, float(t))
            if full_cov:
                cov[i] = np.asarray(_moments_full(coef, self.reward, self.kbar, c, prior)[1])
                var[i] = np.diag(cov[i])
            else:
                var[i] = np.asarray(_moments_var(coef, self.reward, self.kbar, c, prior)[1])
        return mean, var, cov

    @x64
    def from_init(self, dynamics: TDDynamics, x_test, times, residual_c) -> np.ndarray:
        """``Z_t v`` (T, m) for the reduced vector v (p,), by Krylov solves (eq. 8/15)."""
        times = np.asarray(times, np.float64)
        limit = np.isinf(times) & (not dynamics.converges)  # no limit: NaN, as on the dense route
        coefs = jnp.full((self.reduced.p, times.size), jnp.nan)
        keep = np.flatnonzero(~limit)
        if keep.size:
            coefs = coefs.at[:, keep].set(
                self.coefficients(dynamics.schedule, jnp.asarray(residual_c), times[keep])
            )
        return np.asarray(self.products.test(x_test, self._ops.lt(self.state, coefs))[0]).T

    # ------------------------------------------------------------------ Krylov solves
    @x64
    def coefficients(self, schedule: Schedule, forcing, times) -> jax.Array:
        """a_t (p, T) with ``Z_t v = Theta_*Y L^T a_t`` for the reduced vector v (p,).

        For the rewards (the ensemble mean) the answers are kept per (schedule, t), so
        predictions in several blocks of test inputs solve once."""
        times = np.asarray(times, np.float64)
        if forcing is self.reward_c:
            cache = self._mean_cache
            todo = [t for t in dict.fromkeys(times.tolist()) if (schedule, t) not in cache]
            if todo:
                fresh = self.coefficients(schedule, jnp.array(forcing), np.asarray(todo))
                cache.update({(schedule, t): fresh[:, i] for i, t in enumerate(todo)})
            return jnp.stack([cache[(schedule, t)] for t in times.tolist()], axis=1)
        out = jnp.zeros((self.reduced.p, times.size))
        if float(jnp.linalg.norm(forcing)) == 0.0:
            return out
        finite = np.isfinite(times) & (times > 0)
        if np.any(finite):
            solve = self._lanczos if schedule.target is None else self._arnoldi
            out = out.at[:, np.flatnonzero(finite)].set(solve(schedule, forcing, times[finite]))
        if np.any(np.isinf(times)):
            out = out.at[:, np.flatnonzero(np.isinf(times))].set(
                self._fixed_point(schedule, forcing)[:, None]
            )
        return out

    def _lanczos(self, schedule: Schedule, v, times) -> jax.Array:
        """``f_t(H) v`` (p, T) from one Lanczos basis, grown until it settles (module doc)."""
        eta, discrete = schedule.eta(self.reduced.n), schedule.time == "discrete"

        def small(t):  # tridiagonal (k, k) -> Krylov coordinates (k, T), on the host
            theta, s = np.linalg.eigh(t)
            return s @ (_ritz_filters(theta, eta, times, discrete) * s[0][:, None])

        def run(k):
            return _lanczos_run(self._ops, k, self.state, v)

        return self._grow("Lanczos", run, v, small, self.reduced.p, self.reduced.p)

    def _arnoldi(self, schedule: Schedule, v, times) -> jax.Array:
        """TD: the forced solution at every t (p, T) from one Arnoldi basis of M or the step map."""
        eta, tau, p = schedule.eta(self.reduced.n), schedule.target.tau, self.reduced.p
        discrete = schedule.time == "discrete"
        start = eta * jnp.concatenate([v, tau * v if discrete else jnp.zeros_like(v)])

        def small(h):  # Hessenberg (k, k) -> Krylov coordinates (k, T), on the host
            if discrete:
                return np.stack([_power_sum(h, int(t)) for t in times], axis=1)
            return np.stack([_phi1(h, float(t)) for t in times], axis=1)

        def run(k):
            return _arnoldi_run(self._ops, k, discrete, self.state, start, eta, tau)

        return self._grow("Arnoldi", run, start, small, 2 * p, p)

    def _grow(self, name, run, v, small, dim, rows) -> jax.Array:
        """Run a basis of 16, 32, ... vectors until the result of the last basis and of its
        prefix one vector shorter agree to `tol` (relative), or the space is exhausted.

        `small` maps the projected (k, k) matrix to coordinates (k, T) on the host; the
        answer is the first `rows` entries of ``|v| Q^T coordinates``.
        """
        norm = float(jnp.linalg.norm(v))
        k, total = min(16, dim, self.max_iterations), 0
        while True:
            tick = time.perf_counter()
            q, h = run(k)
            h = np.asarray(h)
            total += k
            usable = _usable_size(h)
            coords = _pad_rows(small(h[:usable, :usable]), k)
            exact = usable < k or k >= dim  # an invariant subspace: the answer is exact
            prefix = coords if exact else _pad_rows(small(h[: k - 1, : k - 1]), k)
            both = _combine(q, jnp.asarray(np.concatenate([coords, prefix], axis=1)), rows)
            full, before = norm * both[:, : coords.shape[1]], norm * both[:, coords.shape[1] :]
            scale = jnp.maximum(jnp.linalg.norm(full, axis=0), 1e-300)
            gap = jnp.max(jnp.linalg.norm(full - before, axis=0) / scale)
            change = 0.0 if exact else float(gap)
            log.info("%s basis of %d vectors: change %.2g (tolerance %g; %.1f s)", name, k,
                     change, self.tol, time.perf_counter() - tick)  # fmt: skip
            if exact or change < self.tol or k >= min(dim, self.max_iterations):
                break
            k = min(2 * k, dim, self.max_iterations)
        converged = change < self.tol
        self.report.solves.append(
            {"method": name, "iterations": total, "basis": k, "change": change,
             "converged": converged}
        )  # fmt: skip
        if not converged:
            warnings.warn(
                f"{name}: the answer still changes by {change:.2g} (relative) with {k} basis "
                f"vectors (max_iterations {self.max_iterations}); tolerance {self.tol:g}",
                ConvergenceWarning,
                stacklevel=5,
            )
        return full

    def _solution_scale(self, kind: str, v) -> float:
        """||x|| / ||v|| for the Galerkin solution x of the system: lineax's stopping rule
        compares the change of the iterate with the tolerance times its size entry by entry,
        so the unknown is rescaled to the size of v (x = scale z)."""
        l, q = self.spectrum.values, self._q
        coords = q.T @ v
        if kind == "cg" or self.spectrum.bootstrap is None:
            w = coords / l
        else:
            w = jnp.linalg.solve(jnp.diag(l) - self.spectrum.bootstrap, coords)
        scale = float(jnp.linalg.norm(q @ w) / jnp.linalg.norm(v))
        return scale if np.isfinite(scale) and scale > 0 else 1.0

    def _fixed_point(self, schedule: Schedule, v) -> jax.Array:
        """t = inf: ``H^+ v`` (CG), ``A^-1 v`` (tau = 0, CG) or ``(A - S)^-1 v`` (GMRES with
        the Bellman preconditioner, then BiCGStab and restarted lineax GMRES from where
        the last stopped: module docstring)."""
        kinds = ("cg",) if schedule.target is None or schedule.target.tau == 0 else (
            "bellman", "bicgstab", "gmres")  # fmt: skip
        scale = self._solution_scale(kinds[-1], v)
        x = jnp.zeros_like(v)
        for kind in kinds:
            tick = time.perf_counter()
            if kind == "bellman":
                precondition = self._bellman_preconditioner()
                if precondition is None:
                    continue
                x, steps = self._host_gmres(v, precondition)
            else:
                x, steps = _fixed_run(
                    self._ops, kind, self.max_iterations, self.tol, self.state, v, self._factor,
                    self._shift, scale, x,
                )  # fmt: skip
            residual = float(
                jnp.linalg.norm(_fixed_operator(self._ops, kind, self.state)(x) - v)
                / jnp.linalg.norm(v)
            )
            converged = residual <= 10 * self.tol  # the measured residual decides, not the flag
            name = {"bicgstab": "BiCGStab", "bellman": "GMRES (Bellman preconditioner)"}.get(
                kind, kind.upper())  # fmt: skip
            log.info("%s at t = inf: %d steps, relative residual %.2g (tolerance %g; %.1f s)",
                     name, int(steps), residual, self.tol, time.perf_counter() - tick)  # fmt: skip
            self.report.solves.append(
                {"method": name, "iterations": int(steps), "residual": residual,
                 "converged": converged}
            )  # fmt: skip
            if converged:
                return x
        warnings.warn(
            f"{name}: stopped at relative residual {residual:.2g} after {int(steps)} steps "
            f"(tolerance {self.tol:g}); the value at t = inf is NaN",
            ConvergenceWarning,
            stacklevel=5,
        )
        return jnp.full((self.reduced.p,), jnp.nan)

    def _bellman_preconditioner(self):
        """The `BellmanPreconditioner` of the TD system (built once), or None where its
        tabular part is singular (then the solves fall back to the factor of A)."""
        if self._bellman is None:
            tick = time.perf_counter()
            n_inputs, p = self.reduced.inputs.shape[0], self.reduced.p
            rank = bellman_rank(n_inputs, p)
            factor, shift = _input_cholesky(self.products.spec, self.state["products"]["y"], rank)
            try:
                self._bellman = BellmanPreconditioner(
                    self.reduced.cov_load, self.reduced.load, np.asarray(factor), shift
                )
            except (RuntimeError, np.linalg.LinAlgError, FloatingPointError) as err:
                log.info("Bellman preconditioner unavailable (%s): BiCGStab instead", err)
                self._bellman = False
            else:
                log.info("Bellman preconditioner: sparse LU of %d x %d and rank %d (%.1f s)",
                         p, p, factor.shape[1], time.perf_counter() - tick)  # fmt: skip
        return self._bellman or None

    def _host_gmres(self, v, precondition) -> tuple[jax.Array, int]:
        """(x, kernel products): restarted GMRES (SciPy's, on the host) on ``(A - S) x = v``,
        the products on the devices, preconditioned by `precondition`, stopped at
        relative residual `tol`; the progress is logged every `LOG_EVERY_S` seconds."""
        p, count = self.reduced.p, [0]
        clock = [time.perf_counter(), time.perf_counter()]

        def matvec(a):
            count[0] += 1
            return np.asarray(_td_apply(self._ops, self.state, jnp.asarray(a)))

        def progress(residual):
            if time.perf_counter() - clock[1] > LOG_EVERY_S:
                clock[1] = time.perf_counter()
                log.info("GMRES at t = inf: %d products, preconditioned residual %.2g (%.0f s)",
                         count[0], residual, clock[1] - clock[0])  # fmt: skip

        restart = min(p, GMRES_HOST_RESTART)
        sparse_linalg = _scipy_sparse()[1]
        op = sparse_linalg.LinearOperator((p, p), matvec=matvec, dtype=np.float64)
        pre = sparse_linalg.LinearOperator((p, p), matvec=precondition, dtype=np.float64)
        x, _ = sparse_linalg.gmres(
            op, np.asarray(v), rtol=self.tol, atol=0.0, restart=restart, M=pre,
            maxiter=max(1, -(-self.max_iterations // restart)), callback=progress,
            callback_type="pr_norm",
        )  # fmt: skip
        return jnp.asarray(x), count[0]


class BellmanPreconditioner:
    """``P^-1 x`` for ``P = Lc (F F^T + s I) L^T``: the TD fixed-point system at t = inf
    (eq. 40-41 as restated in the theory page, in reduced coordinates:
    ``(A - S) a = Lc Theta_YY L^T a = U^T r``) with the kernel on the distinct inputs
    replaced by a pivoted partial Cholesky factor F (N, k) plus its shift s.

    ``P = s T + U V^T`` with the sparse tabular part ``T = Lc L^T`` (p, p) (the
    empirical Bellman operator of the data's own inputs: one bootstrapped input per
    transition, long chains included) and ``U = Lc F``, ``V = L F`` (p, k); it is applied
    by a sparse LU of T (SciPy's SuperLU) and the Woodbury identity (k x k).
    Raises RuntimeError where T is singular.

    Args:
        left: Lc (p, N) (``L - N`` for TD). load: L (p, N). factor: F (N, k). shift: s > 0.
    """

    def __init__(self, left: Sparse, load: Sparse, factor: np.ndarray, shift: float):
        lc, l_ = _csr(left), _csr(load)
        self.lu = _scipy_sparse()[1].splu((lc @ l_.T).tocsc())
        self.shift = float(shift)
        self.v = l_ @ factor
        self.w = self.lu.solve(np.asarray(lc @ factor)) / self.shift
        if not np.all(np.isfinite(self.w)):
            raise FloatingPointError("the sparse LU of the tabular part is not finite")
        self.small = scipy.linalg.lu_factor(np.eye(factor.shape[1]) + self.v.T @ self.w)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self.lu.solve(np.asarray(x, np.float64)) / self.shift
        return y - self.w @ scipy.linalg.lu_solve(self.small, self.v.T @ y)


def _csr(s: Sparse):
    """S as a SciPy CSR matrix."""
    return _scipy_sparse()[0].csr_matrix((s.vals, (s.rows, s.cols)), shape=s.shape)


def _scipy_sparse():
    """(scipy.sparse, scipy.sparse.linalg), imported on first use with the warning filters
    restored: importing scipy.sparse adds a global filter, and a library leaves its user's
    filters alone."""
    with warnings.catch_warnings():
        import scipy.sparse
        import scipy.sparse.linalg

    return scipy.sparse, scipy.sparse.linalg


def bellman_rank(n_inputs: int, p: int, available: int | None = None) -> int:
    """Rank of the `BellmanPreconditioner`'s factor: `BELLMAN_RANK`, capped at N and so
    that F, Lc F, V and W (``N + 3 p`` floats per column, as `choice.krylov_bytes`
    counts) take at most an eighth of the available memory (None: psutil's)."""
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    fits = int(available / 8 / (8 * (n_inputs + 3 * p)))
    return max(1, min(BELLMAN_RANK, n_inputs, fits))


# ---------------------------------------------------------------------- pure operators
def _triplet(s: Sparse) -> tuple:
    return (jnp.asarray(s.rows), jnp.asarray(s.cols), jnp.asarray(s.vals))


def _sparse(triplet, m, rows_out: int, transpose: bool = False):
    """``S m`` (or ``S^T m``) for S given as (rows, cols, vals)."""
    rows, cols, vals = triplet
    if transpose:
        rows, cols = cols, rows
    return jax.ops.segment_sum(vals.reshape((-1,) + (1,) * (m.ndim - 1)) * m[cols], rows, rows_out)


@dataclass(frozen=True)
class _Ops:
    """The reduced operators as pure functions of the state pytree (hashable: a jit static)."""

    spec: ProductSpec
    p: int
    n_inputs: int

    def lt(self, state, a):
        """``L^T a``: (p, ...) -> (N, ...)."""
        return _sparse(state["load"], a, self.n_inputs, transpose=True)

    def ct(self, state, a):
        """``Lc^T a``: (p, ...) -> (N, ...)."""
        return _sparse(state["cov"], a, self.n_inputs, transpose=True)

    def l(self, state, m):  # noqa: E743
        return _sparse(state["load"], m, self.p)

    def n(self, state, m):
        return _sparse(state["boot"], m, self.p)

    def c(self, state, m):
        return _sparse(state["cov"], m, self.p)

    def theta(self, state, v):
        """``Theta_YY v`` (N, s) for v = L^T a (zero off the inputs L loads: those
        columns of the kernel are not streamed)."""
        none = jnp.zeros((v.shape[0], 0), v.dtype)
        return kernel_products(self.spec, state["products"], v, none, state["support"])[0]

    def drive(self, state, a):
        """``H a`` (residual gradient) or ``A a`` (TD): (p,) -> (p,)."""
        return self.l(state, self.theta(state, self.lt(state, a)[:, None])[:, 0])

    def td_pair(self, state, a, b):
        """``(A a, S b)`` from one kernel pass: (p,), (p,) -> (p,), (p,)."""
        theta = self.theta(state, jnp.stack([self.lt(state, a), self.lt(state, b)], axis=1))
        return self.l(state, theta[:, 0]), self.n(state, theta[:, 1])

    def td(self, state, a):
        """``(A - S) a = Lc Theta L^T a`` (TD, eq. 40-41 in reduced coordinates):
        (p,) -> (p,), one kernel column."""
        theta = self.theta(state, self.lt(state, a)[:, None])[:, 0]
        return self.l(state, theta) - self.n(state, theta)

    def element(self, state, i, j):
        """``H_ij`` (or ``A_ij``) from the kernel between the few inputs of rows i and j."""
        index, weight = state["rows"]
        y = state["products"]["y"]
        _, theta = _kernel_recursion(y[index[i]], y[index[j]], **dict(self.spec.kernel))
        return weight[i] @ theta @ weight[j]


@functools.partial(backend_jit, static_argnames=("ops", "k"))
def _lanczos_run(ops: _Ops, k: int, state, v):
    result = decomp.tridiag_sym(k, reortho="full")(lambda x: ops.drive(state, x), v)
    return result.Q_tall, result.J_small


@functools.partial(backend_jit, static_argnames=("ops", "k", "discrete"))
def _arnoldi_run(ops: _Ops, k: int, discrete: bool, state, v, eta, tau):
    p = ops.p

    def generator(x):  # M [a; b] (continuous) or the step map of eq. 12 (discrete)
        a, b = x[:p], x[p:]
        aa, sb = ops.td_pair(state, a, b)
        primary = -eta * (aa - sb)
        if discrete:
            new = a + primary
            return jnp.concatenate([new, (1 - tau) * b + tau * new])
        return jnp.concatenate([primary, tau * (a - b)])

    result = decomp.hessenberg(k, reortho="full")(generator, v)
    return result.Q_tall, result.J_small


def _fixed_operator(ops: _Ops, kind: str, state):
    if kind == "cg":
        return lambda a: ops.drive(state, a)

    return lambda a: ops.td(state, a)


@functools.partial(backend_jit, static_argnames=("ops",))
def _td_apply(ops: _Ops, state, a):
    return ops.td(state, a)


GMRES_RESTART = 100
# The Bellman-preconditioned GMRES: restart length (the basis: this many p-vectors on
# the host) and the seconds between progress messages (its rank: `choice.BELLMAN_RANK`).
GMRES_HOST_RESTART = 500
LOG_EVERY_S = 30.0


@functools.partial(backend_jit, static_argnames=("ops", "kind", "max_steps", "tol"))
def _fixed_run(
    ops: _Ops, kind: str, max_steps: int, tol: float, state, v, factor, shift, scale, x0
):
    """(x, kernel products) of CG (kind "cg"), GMRES or BiCGStab on the reduced system from
    ``x0``, preconditioned by ``(F F^T + s I)^-1``, at most ``max_steps`` kernel products.
    The unknown is solved for as ``z = x / scale`` with an absolute tolerance
    ``tol * rms(v)`` in root-mean-square norms (module docstring)."""
    structure = jax.ShapeDtypeStruct((ops.p,), v.dtype)
    precond = lx.FunctionLinearOperator(
        lambda x: _woodbury(factor, shift, x) / scale, structure,
        tags=lx.positive_semidefinite_tag,
    )  # fmt: skip
    op_fn = _fixed_operator(ops, kind, state)
    atol = tol * jnp.sqrt(jnp.mean(v**2))

    def rms(x):
        return jnp.sqrt(jnp.mean(x**2))

    restart = min(ops.p, GMRES_RESTART)
    if kind == "cg":
        op = lx.FunctionLinearOperator(
            lambda z: scale * op_fn(z), structure, tags=lx.positive_semidefinite_tag
        )
        solver, per_step = lx.CG(rtol=0.0, atol=atol, norm=rms, max_steps=max_steps), 1
    else:
        op = lx.FunctionLinearOperator(lambda z: scale * op_fn(z), structure)
        if kind == "gmres":  # lineax counts GMRES steps in restart cycles
            per_step = restart
            solver = lx.GMRES(rtol=0.0, atol=atol, norm=rms, max_steps=max(1, max_steps // restart),
                              restart=restart, stagnation_iters=3)  # fmt: skip
        else:
            per_step = 2
            solver = lx.BiCGStab(rtol=0.0, atol=atol, norm=rms, max_steps=max(1, max_steps // 2))
    options = {"preconditioner": precond, "y0": x0 / scale}
    sol = lx.linear_solve(op, v, solver, options=options, throw=False)
    return scale * sol.value, sol.stats["num_steps"] * per_step


def _greedy_cholesky(diag, column, rank: int):
    """Greedy pivoted partial Cholesky of a PSD matrix given by its diagonal (n,) and
    ``column(j) -> (n,)``: (F (n, rank), the pivot values (rank,)); traceable."""

    def step(i, carry):
        factor_t, rest, pivots = carry  # F^T (rank, n): rows written in place
        j = jnp.argmax(rest)
        pivot = rest[j]
        row = column(j) - factor_t[:, j] @ factor_t
        row = jnp.where(pivot > 0, row / jnp.sqrt(jnp.where(pivot > 0, pivot, 1.0)), 0.0)
        rest = jnp.maximum(rest - row**2, 0.0).at[j].set(0.0)
        return factor_t.at[i].set(row), rest, pivots.at[i].set(pivot)

    init = (jnp.zeros((rank, diag.shape[0])), diag, jnp.zeros(rank))
    factor_t, _, pivots = jax.lax.fori_loop(0, rank, step, init)
    return factor_t.T, pivots


@functools.partial(jax.jit, static_argnames=("ops", "rank"))
def _pivoted_cholesky_run(ops: _Ops, rank: int, state):
    """`_greedy_cholesky` of the driving kernel from its elements: (F (p, rank), the
    diagonal (p,), the pivot values (rank,))."""
    element = functools.partial(ops.element, state)
    rows = jnp.arange(ops.p)
    diag = jax.vmap(element)(rows, rows)
    factor, pivots = _greedy_cholesky(diag, lambda j: jax.vmap(lambda r: element(r, j))(rows), rank)
    return factor, diag, pivots


@functools.partial(jax.jit, static_argnames=("spec", "rank"))
def _input_cholesky_run(spec: ProductSpec, rank: int, y):
    """`_greedy_cholesky` of Theta_YY from its rows: (F (N, rank), the diagonal (N,), the
    pivot values (rank,))."""
    static = dict(spec.kernel)
    diag = jax.vmap(lambda x: _kernel_recursion(x[None], x[None], **static)[1][0, 0])(y)
    factor, pivots = _greedy_cholesky(
        diag, lambda j: _kernel_recursion(y[j][None], y, **static)[1][0], rank
    )
    return factor, diag, pivots


def _input_cholesky(spec: ProductSpec, y, rank: int) -> tuple[jax.Array, float]:
    """(F (N, k), s): ``Theta_YY ~ F F^T + s I`` (`_truncated`), s at least 1e-6 of the
    largest diagonal (a smaller shift only makes the Woodbury system ill-conditioned)."""
    factor, diag, pivots = _input_cholesky_run(spec, rank, y)
    factor, shift = _truncated(factor, diag, pivots)
    return factor, max(shift, 1e-6 * float(jnp.max(diag)))


def _pivoted_cholesky(ops: _Ops, rank: int, state) -> tuple[jax.Array, float]:
    """(F (p, k) with ``H ~ F F^T``, greedy pivots stopped at the numerical rank
    (pivot <= 1e-12 max diagonal), and the shift s of the preconditioner
    ``(F F^T + s I)^-1``: the largest diagonal F leaves unexplained)."""
    return _truncated(*_pivoted_cholesky_run(ops, rank, state))


def _truncated(factor, diag, pivots) -> tuple[jax.Array, float]:
    """The factor's columns up to the numerical rank, and the largest diagonal left."""
    top = float(jnp.max(diag))
    keep = np.asarray(pivots > 1e-12 * top)
    keep = np.arange(keep.size) < (int(np.argmin(keep)) if not keep.all() else keep.size)
    factor = factor[:, keep]
    rest = jnp.maximum(diag - jnp.sum(factor**2, axis=1), 0.0)
    shift = float(jnp.maximum(jnp.max(rest), 1e-12 * top))
    return factor, shift


def _ritz_filters(theta, eta: float, times, discrete: bool) -> np.ndarray:
    """f_t on Ritz values (k,) for every t (T,): (k, T) (the filters of `TDDynamics`)."""
    theta = np.maximum(theta, 0.0)[:, None]
    safe = np.where(theta > 0, theta, 1.0)
    times = np.asarray(times, np.float64)[None]
    with np.errstate(over="ignore", invalid="ignore"):
        if discrete:
            value = (1.0 - (1.0 - eta * safe) ** times) / safe
        else:
            value = -np.expm1(-eta * safe * times) / safe
    return np.where(theta > 0, value, eta * times)


def _pad_rows(a: np.ndarray, k: int) -> np.ndarray:
    """(j, T) -> (k, T) with zero rows appended."""
    return np.concatenate([a, np.zeros((k - a.shape[0], a.shape[1]))])


@functools.partial(jax.jit, static_argnames=("rows",))
def _combine(q, coords, rows: int):
    """``Q^T coords`` restricted to the first `rows` entries: (k, D), (k, T) -> (rows, T)."""
    return (q.T @ coords)[:rows]


def _usable_size(h) -> int:
    """The basis size before a (near) breakdown: the first tiny or non-finite sub-diagonal."""
    h = np.asarray(h)
    k = h.shape[0]
    if k == 0:
        return 0
    sub = np.abs(np.diag(h, -1))
    scale = max(np.abs(h[np.isfinite(h)]).max(initial=0.0), 1e-300)
    bad = np.flatnonzero(~np.isfinite(sub) | (sub <= 1e-13 * scale))
    finite = np.all(np.isfinite(h), axis=0)
    first_nan = int(np.argmin(finite)) if not finite.all() else k
    return int(min(bad[0] + 1 if bad.size else k, first_nan))


def _woodbury(factor, shift: float, x):
    """``(F F^T + s I)^-1 x`` by the Woodbury identity (k x k Cholesky)."""
    small = shift * jnp.eye(factor.shape[1]) + factor.T @ factor
    chol = jax.scipy.linalg.cho_factor(small)
    return (x - factor @ jax.scipy.linalg.cho_solve(chol, factor.T @ x)) / shift


def _phi1(h: np.ndarray, t: float) -> np.ndarray:
    """``t phi_1(t H) e_1`` (k,): the augmented exponential at t / 2^j, squared j times."""
    k = h.shape[0]
    norm = float(np.abs(h).sum(axis=0).max()) if k else 0.0
    j = max(0, int(np.ceil(np.log2(t * norm)))) if norm * t > 1 else 0
    step = t / 2.0**j
    aug = np.zeros((k + 1, k + 1))
    aug[:k, :k], aug[0, k] = h * step, step
    full = scipy.linalg.expm(aug)
    e, w = full[:k, :k], full[:k, k]
    for _ in range(j):  # [E, w] over 2 h: E^2 and w + E w
        e, w = e @ e, w + e @ w
    return w


def _power_sum(h: np.ndarray, steps: int) -> np.ndarray:
    """``sum_{j < steps} H^j e_1`` (k,) by binary powers of ``[[H, e_1], [0, 1]]``."""
    k = h.shape[0]
    aug = np.zeros((k + 1, k + 1))
    aug[:k, :k], aug[0, k], aug[k, k] = h, 1.0, 1.0
    result = np.eye(k + 1)
    while steps:
        if steps & 1:
            result = result @ aug
        steps >>= 1
        if steps:
            aug = aug @ aug
    return result[:k, k]
