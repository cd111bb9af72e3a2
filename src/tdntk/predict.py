"""`TDNTK`: the predictive distribution of TD-trained wide Q-network ensembles.

Built once from a kernel function and the data (the kernels and the
factorisation are computed at construction), then evaluated at any times:

    model = TDNTK(net, data, Schedule(learning_rate=0.01))  # eq. 6-10
    g = model.predict(x_test, t=[0, 2**8, 2**16, np.inf])   # g.mean (T, m), g.cov (T, m, m)

The ensemble moments follow from (*) of the theory page with Q_0 ~ GP(0, K):

    mean_t = Z_t r
    cov_t  = K** - Z_t C - (Z_t C)^T + Z_t Kbar Z_t^T                    (eq. 52)
    C      = K(X, X*) - G P K(X'', X*)
    Kbar   = Cov[Q0(X) - G P Q0(X'')]

(eq. 10 and 29 print a minus sign on the last term: a typo, plus is right; a
Monte Carlo check over Q0 ~ N(0, K) agrees with plus.)

Shapes: n transitions, d features, m test inputs, T times.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from .data import Transitions
from .dynamics import Schedule, SoftTarget, TDDynamics, check_times
from .nets import MLP
from .reduced import reduce_transitions
from .solvers.choice import choose_solver
from .solvers.dense import DenseSolver
from .solvers.kernel_products import default_cache_bytes
from .solvers.krylov import KrylovSolver

__all__ = ["TDNTK", "Prediction", "KernelFn", "critical_learning_rate"]

KernelFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Prediction:
    """Gaussian predictive distribution at T times over m test inputs.

    Attributes:
        t: (T,) training times (gradient steps; np.inf allowed).
        mean: (T, m) ensemble mean of Q.
        var: (T, m) ensemble variance of Q.
        cov: (T, m, m) full covariance, or None when ``full_cov=False``.
    """

    t: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    cov: np.ndarray | None = None

    @property
    def std(self) -> np.ndarray:
        """(T, m) standard deviation (negative round-off variances clipped to 0)."""
        return np.sqrt(np.maximum(self.var, 0.0))


def as_kernel_fn(kernels) -> KernelFn:
    """The (x1, x2) -> (nngp, ntk) function of an MLP (its ``.kernels``) or of a callable."""
    fn = getattr(kernels, "kernels", kernels)
    if not callable(fn):
        raise TypeError(
            "kernels must be an MLP (or any object with a .kernels(x1, x2) method) or a "
            f"callable (x1, x2) -> (nngp, ntk), got {type(kernels).__name__}"
        )
    return fn


def _device_kernel_fn(kernels):
    """The kernel function returning float64 JAX arrays (an MLP's `device_kernels`)."""
    device = getattr(kernels, "device_kernels", None)
    if device is not None:
        return device
    fn = as_kernel_fn(kernels)

    def wrapped(x1, x2):
        nngp, ntk = fn(x1, x2)
        return jnp.asarray(nngp, jnp.float64), jnp.asarray(ntk, jnp.float64)

    return wrapped


class TDNTK:
    """Closed-form TD training dynamics of infinitely wide Q-networks.

    Args:
        kernels: an `MLP` (analytic kernels) or any callable
            ``(x1 (n1, d), x2 (n2, d)) -> (nngp (n1, n2), ntk (n1, n2))``,
            e.g. the empirical kernels of one finite network.
        data: the `Transitions`.
        schedule: the `Schedule` (learning rate; target: None for the
            residual-gradient estimator, sec. 4.1, or `SoftTarget(tau)` for TD
            with a target network, sec. 4.2; time; loss).
        solver: "dense" (kernels as matrices, one eigendecomposition:
            `tdntk.solvers.dense`), "krylov" or a `Krylov` (kernel-vector
            products only: `tdntk.solvers.krylov`), or "auto" (dense when it
            fits in half the device's free memory; `tdntk.solvers.choice`).

    Repeated inputs and transitions are merged exactly first (`tdntk.reduced`).
    The kernels and the driving kernel's factorisation are computed here;
    the dynamics of the schedule are built when first needed (`predict`,
    `dynamics`), which is when `LearningRateWarning` and `DivergenceWarning`
    are raised. `with_schedule` reuses the factorisation for another learning
    rate, tau, time or loss of the same estimator.

    Attributes:
        spectrum: the driving kernel's `Spectrum` (no learning rate).
        critical_learning_rate: eq. 11 for the data, in the schedule's loss convention.
    """

    def __init__(self, kernels, data: Transitions, schedule: Schedule, solver="auto"):
        if not isinstance(data, Transitions):
            raise TypeError(f"data must be a Transitions, got {type(data).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(
                f"schedule must be a Schedule(learning_rate, target, time, loss), got {schedule!r}"
            )
        self.kernel_fn = as_kernel_fn(kernels)
        self.data = data
        self.schedule = schedule
        self.reduced = reduce_transitions(data, td=schedule.target is not None)
        choice = choose_solver(
            solver, self.reduced.inputs.shape[0], self.reduced.p,
            schedule.target is not None, default_cache_bytes() * 2, isinstance(kernels, MLP),
        )  # fmt: skip
        if choice == "dense":
            self.solver = DenseSolver(_device_kernel_fn(kernels), self.reduced, data.reward)
        else:
            self.solver = KrylovSolver(
                kernels, self.reduced, data.reward, choice.tol, choice.rank, choice.cache_bytes,
                choice.max_iterations,
            )  # fmt: skip
        self.spectrum = self.solver.spectrum
        self._dynamics: TDDynamics | None = None

    @property
    def dynamics(self) -> TDDynamics:
        """The `TDDynamics` of the schedule (built, and its warnings raised, on first use)."""
        if self._dynamics is None:
            self._dynamics = self.solver.dynamics(self.schedule)
        return self._dynamics

    def with_schedule(self, schedule: Schedule) -> TDNTK:
        """This model under another schedule of the same estimator, reusing the kernels
        and the factorisation (a different estimator needs a new `TDNTK`)."""
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {schedule!r}")
        if schedule.estimator != self.schedule.estimator:
            raise ValueError(
                f"with_schedule: the model's estimator is {self.schedule.estimator} but the "
                f"schedule's is {schedule.estimator}; build a new TDNTK for it"
            )
        other = copy.copy(self)
        other.schedule = schedule
        other._dynamics = None
        return other

    @property
    def estimator(self) -> str:
        """ "td" (soft target network) or "residual-gradient" (a single Q-network)."""
        return self.schedule.estimator

    @property
    def critical_learning_rate(self) -> float:
        """eq. 11, ``2 / (l_max + l_min)`` of the driving kernel (`Spectrum`)."""
        return self.spectrum.critical_learning_rate(self.schedule.loss)

    @property
    def max_stable_learning_rate(self) -> float:
        """``2 / l_max`` of the driving kernel: discrete gradient descent diverges above it."""
        return self.spectrum.max_stable_learning_rate(self.schedule.loss)

    def _check_test(self, x_test):
        x_test = np.asarray(x_test, dtype=np.float64)
        d = self.data.input_dim
        if x_test.ndim != 2 or x_test.shape[1] != d:
            raise ValueError(f"x_test must have shape (m, {d}) like data.x, got {x_test.shape}")
        if not np.all(np.isfinite(x_test)):
            raise ValueError("x_test contains NaN or infinite values")
        return x_test

    def predict(self, x_test, t, full_cov: bool = True) -> Prediction:
        """Ensemble mean and covariance of Q(x_test) after training time(s) t (eq. 10/52).

        Args:
            x_test: (m, d) inputs X*.
            t: scalar or (T,) times >= 0; np.inf gives the converged ensemble.
            full_cov: return the (T, m, m) covariance; otherwise only the variance,
                with memory O(m n) (use it for many test inputs).
        Returns:
            `Prediction` with mean (T, m), var (T, m) and cov (T, m, m) or None.
        """
        x_test = self._check_test(x_test)
        times = check_times(t, self.schedule.time)
        if full_cov:
            prior = np.asarray(self.kernel_fn(x_test, x_test)[0], np.float64)
        else:
            prior = self._prior_variances(x_test)
        mean, var, cov = self.solver.moments(self.dynamics, x_test, times, prior, full_cov)
        if cov is not None:
            cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
        return Prediction(times, mean, var, cov)

    def _prior_variances(self, x_test):
        diag = getattr(getattr(self.kernel_fn, "__self__", None), "kernel_diagonals", None)
        if diag is not None:
            return np.asarray(diag(x_test)[0], np.float64)
        return np.array([self.kernel_fn(x[None], x[None])[0][0, 0] for x in x_test])

    def predict_from_init(self, x_test, t, q0_test, q0_x, q0_next) -> np.ndarray:
        """The linearised network started from given outputs at initialisation, eq. 8/24 (15/43).

        ``Q_t(X*) = Q0(X*) + Z_t (r - Q0(X) + G P Q0(X''))`` (theory page, (*)); with
        the empirical NTK of one network as `kernels` this is that network's
        linearisation ("Lin." in the paper).

        Args:
            x_test: (m, d) inputs.
            t: scalar or (T,) times.
            q0_test: (m,) outputs at initialisation on x_test.
            q0_x: (n,) outputs at initialisation on data.x.
            q0_next: (n, k) or (n k,) outputs at initialisation on data.x_next.
        Returns:
            (T, m) Q-values.
        """
        x_test = self._check_test(x_test)
        times = check_times(t, self.schedule.time)
        n = self.data.n
        q0_test = _vector("q0_test", q0_test, x_test.shape[0])
        q0_x = _vector("q0_x", q0_x, n)
        q0_next = _vector("q0_next", q0_next, n * self.data.k)
        residual = self.reduced.coords(self.data.reward - q0_x + self.data.bellman(q0_next))
        return q0_test + self.solver.from_init(self.dynamics, x_test, times, residual)


def _vector(name, v, size):
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if v.size != size:
        raise ValueError(f"{name} must have {size} values, got {v.size}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return v


def critical_learning_rate(
    kernels, data: Transitions, target: SoftTarget | None = None, loss: str = "sum"
) -> float:
    """eq. 11, ``2 / (l_max + l_min)`` of the driving kernel on `data`, with no learning rate.

    The driving kernel is Theta_bar (residual gradient, ``target=None``) or
    Theta_XX (TD, a `SoftTarget`); `loss` "mean" multiplies the rate by n.
    """
    return TDNTK(kernels, data, Schedule(1.0, target, loss=loss)).critical_learning_rate
