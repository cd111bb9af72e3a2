"""Linearised TD dynamics: NTK blocks in, the matrix Z_t of the notes out.

Every case has the solution (notes, "One structure for every case")

    Q_t(X*) = Q_0(X*) + Z_t (r - Q_0(X) + G P Q_0(X''))                   (*)

and this module computes Z_t from kernel blocks alone; it knows nothing of
networks, so the same code serves analytic (infinite-width) and empirical
(finite-width) kernels.  Z_t is returned factored as ``Z_t = coef_t @ basis.T``
so that one eigendecomposition serves every t.

Cases (t counts gradient steps at learning rate eta):

* single Q-network (paper sec. 4.1, eq. 8-10): ``Theta_bar = D D^T`` with
  ``D = U - G P V`` and ``Z_t = (Theta_*X - Theta_*X'' P^T G) F_t``,
  ``F_t = Q f_t(l) Q^T``, ``f_t(l) = -expm1(-eta l t) / l`` (limit eta t);
  discrete GD: ``f_k(l) = (1 - (1 - eta l)^k) / l``.
* primary + soft target (sec. 4.2, eq. 13-17, app. B): duals
  ``d/dt [alpha; beta] = M [alpha; beta] + [I; 0] c``, ``c = -eta rhat``,
  ``M = [[-eta Theta_XX, eta G P Theta_X''X], [tau I, -tau I]]``, so
  ``[alpha_t; beta_t] = W_t c`` with ``W_t = int_0^t exp(M s) ds [I; 0]``,
  read off one exponential of the augmented matrix ``[[M, [I; 0]], [0, 0]]``
  (Van Loan).  ``Z_t = eta Theta_*X W_t[:n]``; this equals eq. 15/49 but needs
  no inverse and no 1/tau, so tau = 0 (a frozen target) works.  Discrete
  time: the affine map of eq. 12 applied k times.

Shapes: n transitions, k next inputs per transition (X'' has n k rows),
m test inputs, T times.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from .data import Transitions

__all__ = [
    "SoftTarget",
    "TDDynamics",
    "LearningRateWarning",
    "check_times",
]

TIMES = ("continuous", "discrete")
LOSSES = ("sum", "mean")


class LearningRateWarning(UserWarning):
    """The learning rate is above the critical rate of eq. 11 or the GD stability bound."""


@dataclass(frozen=True)
class SoftTarget:
    """A target network updated by ``theta_bar <- (1 - tau) theta_bar + tau theta`` (eq. 12).

    In continuous time this is ``d/dt omega_bar = tau (omega - omega_bar)`` (eq. 13);
    tau = 0 is a frozen target (the hard-update case between copies).
    """

    tau: float

    def __post_init__(self):
        if not np.isfinite(self.tau) or self.tau < 0:
            raise ValueError(f"SoftTarget: tau must be finite and >= 0, got {self.tau!r}")


def check_times(t, time: str = "continuous") -> np.ndarray:
    """Validate training times: a scalar or 1-D array of t >= 0 (np.inf allowed) -> (T,)."""
    arr = np.atleast_1d(np.asarray(t, dtype=np.float64))
    if arr.ndim != 1:
        raise ValueError(f"t must be a scalar or a 1-D array of times, got shape {arr.shape}")
    if np.any(np.isnan(arr)) or np.any(arr < 0):
        raise ValueError(f"t must be >= 0 (np.inf allowed), got {arr.tolist()}")
    if time == "discrete":
        finite = arr[np.isfinite(arr)]
        if np.any(finite != np.round(finite)):
            raise ValueError(
                f"t must be whole numbers of steps with time='discrete', got {arr.tolist()}"
            )
    return arr


def _check_square(name, a, n):
    a = np.asarray(a, dtype=np.float64)
    if a.shape != (n, n):
        raise ValueError(f"TDDynamics: {name} must have shape ({n}, {n}), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"TDDynamics: {name} contains NaN or infinite values")
    return a


class TDDynamics:
    """Closed-form linearised TD dynamics built once from the NTK on the data.

    Args:
        ntk_xx: (n, n) Theta(X, X).
        ntk_xn: (n, n k) Theta(X, X'') with X'' = ``data.x_next_flat``.
        ntk_nn: (n k, n k) Theta(X'', X'').
        data: the transitions (only the discounts and next weights are used).
        learning_rate: eta > 0.
        target: ``None`` for a single Q-network, or a `SoftTarget`.
        time: "continuous" (gradient flow, the paper) or "discrete" (exact
            linearised gradient descent, t integer).
        loss: "sum" (paper eq. 6/14) or "mean" (divides the loss by n, which
            is the same as learning rate eta / n).
    """

    def __init__(
        self,
        ntk_xx,
        ntk_xn,
        ntk_nn,
        data: Transitions,
        learning_rate: float,
        target: SoftTarget | None = None,
        time: str = "continuous",
        loss: str = "sum",
    ):
        if not isinstance(data, Transitions):
            raise TypeError(f"data must be a Transitions, got {type(data).__name__}")
        if not np.isfinite(learning_rate) or learning_rate <= 0:
            raise ValueError(f"learning_rate must be finite and > 0, got {learning_rate!r}")
        if target is not None and not isinstance(target, SoftTarget):
            raise TypeError(f"target must be None or a SoftTarget, got {target!r}")
        if time not in TIMES:
            raise ValueError(f"time must be one of {TIMES}, got {time!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if time == "discrete" and target is not None and target.tau > 1:
            raise ValueError(f"SoftTarget.tau must be <= 1 with time='discrete', got {target.tau}")
        n, nk = data.n, data.n * data.k
        self.data = data
        self.learning_rate = float(learning_rate)
        self.eta = self.learning_rate / (n if loss == "mean" else 1)
        self.target = target
        self.time = time
        self.loss = loss
        xx = _check_square("ntk_xx", ntk_xx, n)
        nn = _check_square("ntk_nn", ntk_nn, nk)
        xn = np.asarray(ntk_xn, dtype=np.float64)
        if xn.shape != (n, nk):
            raise ValueError(f"TDDynamics: ntk_xn must have shape ({n}, {nk}), got {xn.shape}")
        self.ntk_xx = xx
        # G P Theta(X'', X): (n, n), the bootstrapped block of eq. 17.
        self.gp_ntk_nx = data.bellman(xn.T)
        if target is None:
            # eq. 9/30: Theta_bar = Theta_XX - Theta_XX'' (GP)^T - GP Theta_X''X + GP Theta'' (GP)^T
            gp_nn_gp = data.bellman(data.bellman(nn).T)
            theta_bar = xx - self.gp_ntk_nx - self.gp_ntk_nx.T + gp_nn_gp
            theta_bar = 0.5 * (theta_bar + theta_bar.T)
            evals, self.basis = np.linalg.eigh(theta_bar)
            self.eigenvalues = np.maximum(evals, 0.0)
            self.theta_bar = theta_bar
        else:
            self._cache: dict[float, tuple[np.ndarray, np.ndarray]] = {}
            self._step = self._discrete_step() if time == "discrete" else None
            self.eigenvalues = np.maximum(np.linalg.eigvalsh(0.5 * (xx + xx.T)), 0.0)
        self._warn_learning_rate()

    # ------------------------------------------------------------------ stability
    @property
    def critical_learning_rate(self) -> float:
        """eq. 11: ``2 / (l_max + l_min)`` of the driving kernel, in the `loss` convention.

        The driving kernel is Theta_bar (eq. 9) for a single network and
        Theta_XX (the primary network's regression kernel) with a target network.
        """
        l = self.eigenvalues
        return float(2.0 / (l[-1] + l[0]) * (self.learning_rate / self.eta))

    @property
    def max_stable_learning_rate(self) -> float:
        """``2 / l_max``: above it discrete (linearised) gradient descent diverges."""
        return float(2.0 / self.eigenvalues[-1] * (self.learning_rate / self.eta))

    def _warn_learning_rate(self):
        if self.learning_rate >= self.max_stable_learning_rate:
            warnings.warn(
                f"learning_rate={self.learning_rate:g} >= 2 / l_max = "
                f"{self.max_stable_learning_rate:.4g}: discrete (linearised) gradient descent "
                "diverges at this rate, and continuous time does not describe it",
                LearningRateWarning,
                stacklevel=3,
            )
        elif self.learning_rate > self.critical_learning_rate:
            warnings.warn(
                f"learning_rate={self.learning_rate:g} exceeds the critical rate "
                f"{self.critical_learning_rate:.4g} of eq. 11: gradient descent may not follow "
                "the continuous-time dynamics",
                LearningRateWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ Z_t
    def test_kernel(self, ntk_tx, ntk_tn) -> np.ndarray:
        """The test-train NTK that Z_t multiplies, in the basis of `z_coefficients`: (m, n).

        Single network: ``(Theta_*X - Theta_*X'' P^T G) Q``; target: ``Theta_*X``.

        Args:
            ntk_tx: (m, n) Theta(X*, X).
            ntk_tn: (m, n k) Theta(X*, X'').
        """
        n, nk = self.data.n, self.data.n * self.data.k
        ntk_tx = np.asarray(ntk_tx, dtype=np.float64)
        ntk_tn = np.asarray(ntk_tn, dtype=np.float64)
        if ntk_tx.ndim != 2 or ntk_tx.shape[1] != n:
            raise ValueError(f"ntk_tx must have shape (m, {n}), got {ntk_tx.shape}")
        if ntk_tn.shape != (ntk_tx.shape[0], nk):
            raise ValueError(
                f"ntk_tn must have shape ({ntk_tx.shape[0]}, {nk}), got {ntk_tn.shape}"
            )
        if self.target is not None:
            return ntk_tx
        return (ntk_tx - self.data.bellman(ntk_tn.T).T) @ self.basis

    @property
    def z_basis(self) -> np.ndarray | None:
        """The orthogonal basis R with ``Z_t = coef_t @ R.T`` (None: the identity)."""
        return self.basis if self.target is None else None

    def z_coefficients(self, test_kernel: np.ndarray, t: float) -> np.ndarray:
        """``coef_t`` (m, n) with ``Z_t = coef_t @ z_basis.T`` at one time t (np.inf allowed).

        Args:
            test_kernel: (m, n) from `test_kernel`.
        """
        if self.target is None:
            return test_kernel * self.spectral_filter(t)
        return test_kernel @ self._target_transfer(t)

    def dual(self, t: float, rhat: np.ndarray) -> np.ndarray:
        """Dual variables at time t for the TD error at init ``rhat = Q0 - r - G P Q0''`` (n,).

        Returns alpha_t (n,): the parameter displacement is ``omega_t = D^T alpha_t``
        with ``D = U - G P V`` for a single network (eq. 8) and ``D = U`` with a
        target network (eq. 15).
        """
        rhat = np.asarray(rhat, dtype=np.float64)
        if self.target is None:
            return -self.basis @ (self.spectral_filter(t) * (self.basis.T @ rhat))
        return -self._target_transfer(t) @ rhat

    # ------------------------------------------------------------------ single network
    def spectral_filter(self, t: float) -> np.ndarray:
        """f_t(l) (n,) on the eigenvalues of Theta_bar, so that ``F_t = Q diag(f_t) Q^T``.

        Continuous: ``-expm1(-eta l t) / l``; discrete: ``(1 - (1 - eta l)^t) / l``;
        both -> eta t as l -> 0.  t = inf: ``1 / l`` on the range of Theta_bar
        (eigenvalues above ``n * eps * l_max``) and 0 on its null space, which
        Z_t never sees.
        """
        l, eta = self.eigenvalues, self.eta
        positive = l > l[-1] * l.size * np.finfo(np.float64).eps
        safe = np.where(positive, l, 1.0)
        if np.isinf(t):
            out = np.where(positive, 1.0 / safe, 0.0)
            if self.time == "discrete" and eta * l[-1] >= 2:
                out = np.where(positive & (eta * l >= 2), np.nan, out)
            return out
        if self.time == "continuous":
            return np.where(l > 0, -np.expm1(-eta * safe * t) / safe, eta * t)
        step = 1.0 - eta * l
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            stable = np.abs(step) < 1
            decay = np.where(
                stable & (step > 0),
                -np.expm1(t * np.log1p(-eta * np.where(stable, l, 0.0))),
                1.0 - np.power(step, t),
            )
        return np.where(l > 0, decay / safe, eta * t)

    # ------------------------------------------------------------------ target network
    def _target_transfer(self, t: float) -> np.ndarray:
        """``eta W_t[:n]`` (n, n): alpha_t = -(this) rhat and Z_t = Theta_*X (this)."""
        n = self.data.n
        if t == 0:
            return np.zeros((n, n))
        if np.isinf(t):
            return self._target_fixed_point()
        _, w = self._semigroup(float(t))
        return self.eta * w[:n]

    def _target_fixed_point(self) -> np.ndarray:
        """t = inf: ``eta W_inf[:n] = (Theta_XX - G P Theta_X''X)^{-1}`` (eq. 40-41).

        With tau = 0 the target stays at initialisation and the primary network
        regresses onto ``r + G P Q0''``: ``Theta_XX^+`` (pseudo-inverse).
        """
        if self.target.tau == 0:
            return np.linalg.pinv(self.ntk_xx, hermitian=True)
        a = self.ntk_xx - self.gp_ntk_nx
        try:
            return np.linalg.solve(a, np.eye(a.shape[0]))
        except np.linalg.LinAlgError:
            return np.linalg.pinv(a)

    def _generator(self) -> np.ndarray:
        n, eta, tau = self.data.n, self.eta, self.target.tau
        eye = np.eye(n)
        return np.block([[-eta * self.ntk_xx, eta * self.gp_ntk_nx], [tau * eye, -tau * eye]])

    def _discrete_step(self) -> tuple[np.ndarray, np.ndarray]:
        """One GD step then the soft update (eq. 12): x -> A x + B c on x = [alpha; beta]."""
        n, eta, tau = self.data.n, self.eta, self.target.tau
        eye = np.eye(n)
        primary = np.hstack([eye - eta * self.ntk_xx, eta * self.gp_ntk_nx])
        target = (1 - tau) * np.hstack([np.zeros((n, n)), eye]) + tau * primary
        return np.vstack([primary, target]), np.vstack([eye, tau * eye])

    def _exact(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(E_t, W_t) from scratch: E_t (2n, 2n) homogeneous part, W_t (2n, n) forced part."""
        n = self.data.n
        if self.time == "continuous":
            aug = np.zeros((3 * n, 3 * n))
            aug[: 2 * n, : 2 * n] = self._generator() * t
            aug[:n, 2 * n :] = np.eye(n) * t
            full = scipy.linalg.expm(aug)
            return full[: 2 * n, : 2 * n], full[: 2 * n, 2 * n :]
        # discrete: binary powers of the one-step map
        steps = int(t)
        result = None
        power = self._step
        while steps:
            if steps & 1:
                result = power if result is None else _compose(result, power)
            steps >>= 1
            if steps:
                power = _compose(power, power)
        return result

    def _semigroup(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(E_t, W_t), reusing cached times: E_2t = E_t^2 and W_2t = W_t + E_t W_t, and
        likewise t = a + b from cached a and b (the doubling grid costs one exponential)."""
        cache = self._cache
        if t in cache:
            return cache[t]
        half = t / 2
        if half in cache:
            value = _compose(cache[half], cache[half])
        else:
            parts = [(a, t - a) for a in cache if (t - a) in cache]
            value = _compose(cache[parts[0][0]], cache[parts[0][1]]) if parts else self._exact(t)
        if len(cache) >= 4:  # bound memory (each entry holds 2n x 3n floats); keep the
            cache.pop(sorted(cache)[1])  # smallest time (a grid step) and the latest ones
        cache[t] = value
        return value


def _compose(first, second):
    """Run `first` then `second` from zero: (E_a, W_a), (E_b, W_b) -> (E_a E_b, W_b + E_b W_a)."""
    e_a, w_a = first
    e_b, w_b = second
    return e_b @ e_a, w_b + e_b @ w_a
