"""`TDNTK`: the predictive distribution of TD-trained wide Q-network ensembles.

Built once from a kernel function and the data (the kernels and the
factorisation are computed at construction), then evaluated at any times:

    model = TDNTK(net, data, Schedule(learning_rate=0.01))  # eq. 6-10
    g = model.predict(x_test, t=[0, 2**8, 2**16, np.inf])   # g.mean (T, m), g.cov (T, m, m)

The ensemble moments follow from (*) of the notes with Q_0 ~ GP(0, K):

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

import numpy as np

from .data import Transitions
from .dynamics import Schedule, SoftTarget, TDDynamics, check_times, driving_spectrum

__all__ = ["TDNTK", "Prediction", "KernelFn", "critical_learning_rate"]

# Rows of x_test per kernel call: bounds the raw (rows, n + n k) kernel blocks.
_TEST_BLOCK_ROWS = 2048

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


def _kernel_fn(kernels) -> KernelFn:
    fn = getattr(kernels, "kernels", kernels)
    if not callable(fn):
        raise TypeError(
            "kernels must be an MLP (or any object with a .kernels(x1, x2) method) or a "
            f"callable (x1, x2) -> (nngp, ntk), got {type(kernels).__name__}"
        )
    return fn


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

    The kernels and the driving kernel's eigendecomposition are computed here;
    the dynamics of the schedule are built when first needed (`predict`,
    `dynamics`), which is when `LearningRateWarning` and `DivergenceWarning`
    are raised. `with_schedule` reuses the factorisation for another learning
    rate, tau, time or loss of the same estimator.

    Attributes:
        spectrum: the driving kernel's `Spectrum` (no learning rate).
        critical_learning_rate: eq. 11 for the data, in the schedule's loss convention.
    """

    def __init__(self, kernels, data: Transitions, schedule: Schedule):
        if not isinstance(data, Transitions):
            raise TypeError(f"data must be a Transitions, got {type(data).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(
                f"schedule must be a Schedule(learning_rate, target, time, loss), got {schedule!r}"
            )
        self.kernel_fn = _kernel_fn(kernels)
        self.data = data
        self.schedule = schedule
        n = data.n
        self._train_inputs = np.concatenate([data.x, data.x_next_flat])
        nngp, ntk = self.kernel_fn(self._train_inputs, self._train_inputs)
        nngp, ntk = np.asarray(nngp, np.float64), np.asarray(ntk, np.float64)
        td = schedule.target is not None
        self.spectrum = driving_spectrum(ntk[:n, :n], ntk[:n, n:], ntk[n:, n:], data, td)
        del ntk
        # Kbar = Cov[Q0(X) - G P Q0(X'')] in the basis of Z_t.
        k_xx, k_xn, k_nn = nngp[:n, :n], nngp[:n, n:], nngp[n:, n:]
        gp_k_nx = data.bellman(k_xn.T)
        kbar = k_xx - gp_k_nx - gp_k_nx.T + data.bellman(data.bellman(k_nn).T).T
        self._basis = self.spectrum.basis
        self._kbar = self._to_basis(self._to_basis(kbar).T)
        self._reward = self._to_basis(data.reward)
        self._dynamics: TDDynamics | None = None

    @property
    def dynamics(self) -> TDDynamics:
        """The `TDDynamics` of the schedule (built, and its warnings raised, on first use)."""
        if self._dynamics is None:
            self._dynamics = TDDynamics(self.spectrum, self.data, self.schedule)
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
        """"td" (soft target network) or "residual-gradient" (a single Q-network)."""
        return self.schedule.estimator

    @property
    def critical_learning_rate(self) -> float:
        """eq. 11, ``2 / (l_max + l_min)`` of the driving kernel (`Spectrum`)."""
        return self.spectrum.critical_learning_rate(self.schedule.loss)

    @property
    def max_stable_learning_rate(self) -> float:
        """``2 / l_max`` of the driving kernel: discrete gradient descent diverges above it."""
        return self.spectrum.max_stable_learning_rate(self.schedule.loss)

    def _to_basis(self, a):
        return self._basis.T @ a

    def _check_test(self, x_test):
        x_test = np.asarray(x_test, dtype=np.float64)
        d = self.data.input_dim
        if x_test.ndim != 2 or x_test.shape[1] != d:
            raise ValueError(f"x_test must have shape (m, {d}) like data.x, got {x_test.shape}")
        if not np.all(np.isfinite(x_test)):
            raise ValueError("x_test contains NaN or infinite values")
        return x_test

    def _test_blocks(self, x_test):
        """Test-train kernels reduced as they are computed, in row blocks of x_test.

        Returns (test_kernel (m, r) for `z_coefficients`, C in the basis (r, m)),
        so memory stays O(m n) however large the raw (m, n + n k) kernel blocks.
        """
        n = self.data.n
        test_kernel, c = [], []
        for start in range(0, x_test.shape[0], _TEST_BLOCK_ROWS):
            nngp, ntk = self.kernel_fn(x_test[start : start + _TEST_BLOCK_ROWS], self._train_inputs)
            nngp, ntk = np.asarray(nngp, np.float64), np.asarray(ntk, np.float64)
            test_kernel.append(self.dynamics.test_kernel(ntk[:, :n], ntk[:, n:]))
            # C^T = K(X*, X) - K(X*, X'') P^T G
            c.append((nngp[:, :n] - self.data.bellman(nngp[:, n:].T).T).T)
        return np.concatenate(test_kernel), self._to_basis(np.concatenate(c, axis=1))

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
        times = check_times(t, self.dynamics.time)
        test_kernel, c = self._test_blocks(x_test)
        if full_cov:
            prior, _ = self.kernel_fn(x_test, x_test)
            prior = np.asarray(prior, np.float64)
            prior_var = np.diag(prior)
        else:
            prior_var = self._prior_variances(x_test)
        m, n_t = x_test.shape[0], times.size
        mean = np.empty((n_t, m))
        var = np.empty((n_t, m))
        cov = np.empty((n_t, m, m)) if full_cov else None
        for i in np.argsort(times, kind="stable"):
            coef = self.dynamics.z_coefficients(test_kernel, times[i])
            mean[i] = coef @ self._reward
            zkz = coef @ self._kbar
            if full_cov:
                zc = coef @ c
                cov_i = prior - zc - zc.T + zkz @ coef.T
                cov[i] = 0.5 * (cov_i + cov_i.T)
                var[i] = np.diag(cov[i])
            else:  # O(m r) memory: only the diagonals of Z C and Z Kbar Z^T
                var[i] = prior_var - 2 * np.einsum("mr,rm->m", coef, c) + np.einsum(
                    "mr,mr->m", zkz, coef
                )
        return Prediction(times, mean, var, cov)

    def _prior_variances(self, x_test):
        diag = getattr(getattr(self.kernel_fn, "__self__", None), "kernel_diagonals", None)
        if diag is not None:
            return np.asarray(diag(x_test)[0], np.float64)
        return np.array([self.kernel_fn(x[None], x[None])[0][0, 0] for x in x_test])

    def predict_from_init(self, x_test, t, q0_test, q0_x, q0_next) -> np.ndarray:
        """The linearised network started from given outputs at initialisation, eq. 8/24 (15/43).

        ``Q_t(X*) = Q0(X*) + Z_t (r - Q0(X) + G P Q0(X''))`` (notes, (*)); with
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
        times = check_times(t, self.dynamics.time)
        n = self.data.n
        q0_test = _vector("q0_test", q0_test, x_test.shape[0])
        q0_x = _vector("q0_x", q0_x, n)
        q0_next = _vector("q0_next", q0_next, n * self.data.k)
        residual = self._to_basis(self.data.reward - q0_x + self.data.bellman(q0_next))
        test_kernel, _ = self._test_blocks(x_test)
        out = np.empty((times.size, x_test.shape[0]))
        for i, ti in enumerate(times):
            out[i] = q0_test + self.dynamics.z_coefficients(test_kernel, ti) @ residual
        return out


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
