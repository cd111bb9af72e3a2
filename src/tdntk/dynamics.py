"""Linearised TD dynamics: NTK blocks in, the matrix Z_t of the theory page out.

Every case has the solution (theory page, "One structure for every case")

    Q_t(X*) = Q_0(X*) + Z_t (r - Q_0(X) + G P Q_0(X''))                   (*)

and this module computes Z_t from the driving kernel alone, in the reduced
coordinates of `tdntk.reduced` (p groups of transitions; p = n without repeats);
it knows nothing of networks, so the same code serves analytic
(infinite-width) and empirical (finite-width) kernels.  Z_t is returned
factored as ``Z_t = coef_t @ basis.T`` with an orthonormal (p, r) basis of
the range of the driving kernel, so that one eigendecomposition serves every
t and a singular kernel costs nothing.  Arrays are JAX float64 arrays on the
default device (taken in a local ``jax.enable_x64`` scope); only the
eigenvalues of the non-symmetric matrices of the stability check are computed
on the host (JAX's ``eig`` runs on CPUs only).

Cases (t counts gradient steps at learning rate eta):

* single Q-network, the **residual-gradient** estimator (paper sec. 4.1,
  eq. 8-10; gradients through both Q(X) and Q(X''), Baird's residual
  gradient): ``Theta_bar = D D^T`` with ``D = U - G P V``; on its range
  ``Theta_bar = Q diag(l) Q^T`` and ``Z_t = (Theta_*X - Theta_*X'' P^T G) Q f_t(l) Q^T``,
  ``f_t(l) = -expm1(-eta l t) / l``; discrete GD: ``f_k(l) = (1 - (1 - eta l)^k) / l``;
  t = inf: ``1 / l`` (the pseudo-inverse).  It minimises the squared Bellman
  residual: biased when one input has several observed next inputs.
* primary + soft target network, the **TD** estimator (semi-gradient TD;
  sec. 4.2, eq. 13-17, app. B).  Only ``U^T alpha`` matters, so the duals are
  solved on the range of ``Theta_XX = Q L Q^T`` (``alpha = Q a``, ``beta = Q b``):

      d/dt [a; b] = M [a; b] + [I; 0] c,    c = -eta Q^T rhat,
      M = [[-eta L, eta S], [tau I, -tau I]],    S = Q^T G P Theta_X''X Q,

  so ``[a_t; b_t] = W_t c`` with ``W_t = int_0^t exp(M s) ds [I; 0]`` read off
  one exponential of the augmented matrix ``[[M, [I; 0]], [0, 0]]`` (Van Loan)
  at a moderate time and squared up to t (``W_2t = W_t + E_t W_t``); then
  ``Z_t = eta Theta_*X Q W_t[:r] Q^T``.  This equals eq. 15/49 but needs no
  inverse and no 1/tau, so tau = 0 (a frozen target) works.  Discrete time:
  eq. 12's affine step map applied k times (binary powers).  t = inf, tau > 0:
  ``a = -(L - S)^{-1} Q^T rhat``, i.e. the minimum-norm solution
  ``alpha = -(Theta_XX A)^+ Theta_XX rhat`` with ``A = Theta_XX - G P Theta_X''X``
  (``A = A Q Q^T`` and ``Q^T A Q = L - S``): the averaged Bellman equation
  holds at every distinct input (certainty equivalence on tabular data).

Stability: the residual gradient converges in continuous time and diverges in
discrete time iff ``eta l_max >= 2``.  TD with a target network can diverge at
any learning rate (the deadly triad): it converges iff every eigenvalue of M
has negative real part (discrete time: the step map's spectral radius < 1).
A diverging case warns with `DivergenceWarning` at construction and gives NaN
at t = inf; finite t are still computed exactly.

Shapes: n transitions, p reduced coordinates, r <= p range dimension,
m test inputs, T times.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SoftTarget",
    "Schedule",
    "Spectrum",
    "Stability",
    "TDDynamics",
    "LearningRateWarning",
    "DivergenceWarning",
    "driving_spectrum",
    "stability",
    "check_times",
    "x64",
]

TIMES = ("continuous", "discrete")
LOSSES = ("sum", "mean")
_EPS = np.finfo(np.float64).eps
# An eigenvalue of M with real part above this fraction of max |lambda| counts as
# divergence (slower growth is below what double precision resolves in the spectrum).
DIVERGENCE_RTOL = float(np.sqrt(_EPS))


def x64(fn):
    """Run `fn` in a local ``jax.enable_x64`` scope (float64 JAX arrays inside)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper


class LearningRateWarning(UserWarning):
    """The learning rate is above the critical rate of eq. 11 or the GD stability bound."""


class DivergenceWarning(UserWarning):
    """The linearised TD dynamics diverge (or have no unique fixed point): t = inf is NaN."""


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


@dataclass(frozen=True)
class Schedule:
    """How the networks are trained: the one object every entry point takes.

    Args:
        learning_rate: eta > 0, per gradient step of the `loss`.
        target: None for a single Q-network (the residual-gradient estimator,
            paper sec. 4.1), or `SoftTarget(tau)` for TD with a soft target
            network (paper sec. 4.2); in discrete time tau is a fraction per
            step in [0, 1], in continuous time a rate >= 0.
        time: "continuous" (gradient flow, the paper; t any real >= 0) or
            "discrete" (exact gradient descent of the linearised network; t
            whole steps).
        loss: "sum" (paper eq. 6/14) or "mean" (divided by n, which equals
            learning rate eta / n).
    """

    learning_rate: float
    target: SoftTarget | None = None
    time: str = "continuous"
    loss: str = "sum"

    def __post_init__(self):
        lr = self.learning_rate
        number = isinstance(lr, int | float | np.floating | np.integer) and not isinstance(lr, bool)
        if not number or not np.isfinite(lr) or lr <= 0:
            raise ValueError(f"Schedule: learning_rate must be finite and > 0, got {lr!r}")
        if self.target is not None and not isinstance(self.target, SoftTarget):
            raise TypeError(
                f"Schedule: target must be None or a SoftTarget(tau), got {self.target!r}"
            )
        if self.time not in TIMES:
            raise ValueError(f"Schedule: time must be one of {TIMES}, got {self.time!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"Schedule: loss must be one of {LOSSES}, got {self.loss!r}")
        if self.time == "discrete" and self.target is not None and self.target.tau > 1:
            raise ValueError(
                f"Schedule: SoftTarget.tau must be <= 1 with time='discrete' (a fraction per "
                f"step, eq. 12), got {self.target.tau}; in continuous time tau is a rate and "
                "may exceed 1"
            )

    @property
    def estimator(self) -> str:
        """ "td" (with a target network) or "residual-gradient" (a single Q-network)."""
        return "residual-gradient" if self.target is None else "td"

    def eta(self, n: int) -> float:
        """The rate of the summed loss: learning_rate, or learning_rate / n for "mean"."""
        return self.learning_rate / (n if self.loss == "mean" else 1)


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


# ---------------------------------------------------------------------- the driving kernel
@dataclass(frozen=True, eq=False)
class Spectrum:
    """The driving kernel of one estimator, factorised on its numerical range.

    No learning rate enters: one `Spectrum` serves every `Schedule` of its estimator.

    Attributes:
        eigenvalues: (p,) all eigenvalues, ascending, clipped at 0 (eq. 11 reads them).
        values: (r,) the range's eigenvalues l (``l > p eps l_max``).
        basis: (p, r) orthonormal basis Q of the range.
        bootstrap: TD only: S = Q^T N Theta L^T Q (r, r); None for the residual gradient.
        n: the number of transitions (the "mean" loss divides by it).
    """

    eigenvalues: jax.Array
    values: jax.Array
    basis: jax.Array
    bootstrap: jax.Array | None
    n: int

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    def critical_learning_rate(self, loss: str = "sum") -> float:
        """eq. 11: ``2 / (l_max + l_min)``, in the convention of `loss` (x n for "mean")."""
        l = np.asarray(self.eigenvalues)
        return float(2.0 / (l[-1] + l[0]) * (self.n if loss == "mean" else 1))

    def max_stable_learning_rate(self, loss: str = "sum") -> float:
        """``2 / l_max``: above it discrete gradient descent on the driving kernel diverges."""
        return float(2.0 / float(self.eigenvalues[-1]) * (self.n if loss == "mean" else 1))


@x64
def driving_spectrum(kernel, bootstrap=None, n: int | None = None) -> Spectrum:
    """The `Spectrum` of a driving kernel in reduced coordinates.

    Args:
        kernel: (p, p) ``L Theta L^T``: ``U^T Theta_bar U`` (residual gradient,
            eq. 9/30) or ``U^T Theta_XX U`` (TD) (`tdntk.reduced`).
        bootstrap: TD only: (p, p) ``N Theta L^T = U^T G P Theta_X''X U``.
        n: the number of transitions (default p).
    """
    kernel = jnp.asarray(kernel, jnp.float64)
    p = kernel.shape[0]
    if kernel.shape != (p, p) or not bool(jnp.all(jnp.isfinite(kernel))):
        raise ValueError(
            f"driving_spectrum: kernel must be a finite (p, p) matrix, got shape {kernel.shape}"
        )
    evals, vecs = _eigh(kernel)
    keep = np.asarray(evals > p * _EPS * max(float(evals[-1]), 0.0))
    values, basis = evals[keep], vecs[:, keep]
    boot = None
    if bootstrap is not None:
        bootstrap = jnp.asarray(bootstrap, jnp.float64)
        if bootstrap.shape != (p, p):
            raise ValueError(f"driving_spectrum: bootstrap must have shape ({p}, {p})")
        boot = basis.T @ bootstrap @ basis
    return Spectrum(evals, values, basis, boot, p if n is None else int(n))


@jax.jit
def _eigh(kernel):
    """Eigenvalues (ascending, clipped at 0) and eigenvectors of the symmetrised kernel."""
    evals, vecs = jnp.linalg.eigh(0.5 * (kernel + kernel.T))
    return jnp.maximum(evals, 0.0), vecs


# ---------------------------------------------------------------------- stability
@dataclass(frozen=True)
class Stability:
    """What a `Schedule` does on a `Spectrum` (`stability`).

    Attributes:
        critical_learning_rate: eq. 11 for the driving kernel (`loss` convention).
        max_stable_learning_rate: 2 / l_max of the driving kernel.
        converges: whether the linearised dynamics have a limit as t -> inf.
        growth: the number that decides it: the largest real part of M's
            eigenvalues (TD, continuous), the spectral radius of the step map
            (discrete), ``eta l_max`` (residual gradient or a frozen target,
            discrete) or ``-eta l_min`` (continuous, always convergent).
        cause: why it diverges ("" when it converges).
    """

    critical_learning_rate: float
    max_stable_learning_rate: float
    converges: bool
    growth: float
    cause: str


def _host_eigvals(m) -> np.ndarray:
    """Eigenvalues of a non-symmetric matrix, on the host (JAX's eig runs on CPUs only)."""
    return np.linalg.eigvals(np.asarray(m, np.float64))


@x64
def stability(spectrum: Spectrum, schedule: Schedule) -> Stability:
    """Critical rates (eq. 11) and convergence of `schedule` on `spectrum` (module docstring)."""
    eta = schedule.eta(spectrum.n)
    l = np.asarray(spectrum.values)
    crit = spectrum.critical_learning_rate(schedule.loss)
    top = spectrum.max_stable_learning_rate(schedule.loss)
    eta_lmax = eta * (l[-1] if l.size else 0.0)
    tau = None if schedule.target is None else schedule.target.tau
    if tau is None or tau == 0:  # gradient flow on a PSD kernel, or onto a fixed target
        if schedule.time == "continuous":
            return Stability(crit, top, True, -eta * (l[0] if l.size else 0.0), "")
        return Stability(crit, top, eta_lmax < 2, eta_lmax, (
            f"eta l_max = {eta_lmax:.4g} >= 2: gradient descent on the linearised network "
            f"diverges (learning_rate above 2 / l_max = {top:.4g})"
        ))  # fmt: skip
    if schedule.time == "continuous":
        lam = _host_eigvals(_generator(spectrum, eta, tau)) if l.size else np.zeros(1)
        growth = float(lam.real.max())
        converges = growth <= DIVERGENCE_RTOL * float(np.abs(lam).max())
        return Stability(crit, top, converges, growth, (
            f"TD with a target network diverges on this data: the generator M has an "
            f"eigenvalue with real part {growth:.3g} > 0 (the deadly triad; eq. 11's rate does "
            "not prevent it). The residual-gradient estimator (target=None) always converges"
        ))  # fmt: skip
    if tau == 1:  # the target copies the primary: the step map acts like I - eta (L - S)
        step = jnp.eye(l.size) - eta * (jnp.diag(spectrum.values) - spectrum.bootstrap)
    else:
        step = _discrete_step(spectrum, eta, tau)[0]
    radius = float(np.abs(_host_eigvals(step)).max()) if l.size else 0.0
    return Stability(crit, top, radius <= 1 + DIVERGENCE_RTOL, radius, (
        f"TD with a target network diverges in discrete time on this data: the step map of "
        f"eq. 12 has spectral radius {radius:.6g} > 1 (eta l_max = {eta_lmax:.4g})"
    ))  # fmt: skip


def _generator(spectrum: Spectrum, eta: float, tau: float) -> jax.Array:
    """M (2r, 2r) of the reduced dual dynamics (module docstring)."""
    return _generator_matrix(spectrum.values, spectrum.bootstrap, eta, tau)


@jax.jit
def _generator_matrix(l, s, eta, tau):
    eye = jnp.eye(l.size, dtype=l.dtype)
    return jnp.block([[-eta * jnp.diag(l), eta * s], [tau * eye, -tau * eye]])


def _discrete_step(spectrum: Spectrum, eta: float, tau: float) -> tuple[jax.Array, jax.Array]:
    """One GD step then the soft update (eq. 12): x -> A x + B c on x = [a; b]."""
    return _step_matrices(spectrum.values, spectrum.bootstrap, eta, tau)


@jax.jit
def _step_matrices(l, s, eta, tau):
    r = l.size
    eye = jnp.eye(r, dtype=l.dtype)
    primary = jnp.hstack([eye - eta * jnp.diag(l), eta * s])
    target = (1 - tau) * jnp.hstack([jnp.zeros((r, r), l.dtype), eye]) + tau * primary
    return jnp.vstack([primary, target]), jnp.vstack([eye, tau * eye])


# ---------------------------------------------------------------------- the dynamics
class TDDynamics:
    """Closed-form linearised TD dynamics of one `Schedule` on one `Spectrum`.

    Args:
        spectrum: the driving kernel's `Spectrum` (`driving_spectrum`), of the
            schedule's estimator.
        schedule: learning rate, target, time and loss.

    Warns:
        LearningRateWarning: above the critical rate of eq. 11 or 2 / l_max.
        DivergenceWarning: when the dynamics diverge (t = inf is then NaN).

    Attributes:
        basis: (p, r) orthonormal basis of the driving kernel's numerical range.
        stability: the `Stability` (critical rates, convergence).
    """

    @x64
    def __init__(self, spectrum: Spectrum, schedule: Schedule):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
        if (spectrum.bootstrap is not None) != (schedule.target is not None):
            kind = "td" if spectrum.bootstrap is not None else "residual-gradient"
            raise ValueError(
                f"TDDynamics: the spectrum is of the {kind} estimator but the schedule's "
                f"is {schedule.estimator}"
            )
        self.schedule = schedule
        self.target = schedule.target
        self.time = schedule.time
        self.eta = schedule.eta(spectrum.n)
        self.spectrum = spectrum
        self.basis = spectrum.basis
        self._l = spectrum.values
        if self.target is not None:
            self._cache: dict[float, tuple[jax.Array, jax.Array]] = {}
            discrete = self.time == "discrete"
            self._step = _discrete_step(spectrum, self.eta, self.target.tau) if discrete else None
            self._fixed: jax.Array | None = None
        self.stability = stability(spectrum, schedule)
        self._warn_learning_rate()
        if not self.stability.converges:
            warnings.warn(
                f"{self.stability.cause}; the prediction at t = inf is NaN (finite t are "
                "computed exactly)",
                DivergenceWarning,
                stacklevel=4,
            )

    @property
    def rank(self) -> int:
        """r: the dimension of the driving kernel's numerical range."""
        return int(self.basis.shape[1])

    @property
    def converges(self) -> bool:
        return self.stability.converges

    def _warn_learning_rate(self):
        lr, st = self.schedule.learning_rate, self.stability
        if lr >= st.max_stable_learning_rate:
            warnings.warn(
                f"learning_rate={lr:g} >= 2 / l_max = {st.max_stable_learning_rate:.4g}: "
                "discrete (linearised) gradient descent diverges at this rate, and continuous "
                "time does not describe it",
                LearningRateWarning,
                stacklevel=5,
            )
        elif lr > st.critical_learning_rate:
            warnings.warn(
                f"learning_rate={lr:g} exceeds the critical rate "
                f"{st.critical_learning_rate:.4g} of eq. 11: gradient descent may not follow "
                "the continuous-time dynamics",
                LearningRateWarning,
                stacklevel=5,
            )

    # ------------------------------------------------------------------ Z_t
    @x64
    def z_coefficients(self, test_kernel, t: float) -> jax.Array:
        """``coef_t`` (m, r) with ``Z_t = coef_t @ basis.T`` at one time t (np.inf allowed).

        Args:
            test_kernel: (m, r) the test-train NTK in the basis: ``Theta_*Y L^T Q``.
        """
        if self.target is None:
            return test_kernel * self.spectral_filter(t)
        return test_kernel @ self.transfer(t)

    @x64
    def dual(self, t: float, rhat_c) -> jax.Array:
        """Dual coordinates a_t (p,) for the reduced TD error at init ``U^T rhat`` (p,).

        ``alpha_t = U a_t`` (`tdntk.reduced.Reduced.lift`); the parameter
        displacement is ``omega_t = D^T alpha_t`` with ``D = U - G P V`` for a
        single network (eq. 8) and ``D = U`` with a target network (eq. 15).
        """
        coords = self.basis.T @ jnp.asarray(rhat_c, jnp.float64)
        if self.target is None:
            return -self.basis @ (self.spectral_filter(t) * coords)
        return -self.basis @ (self.transfer(t) @ coords)

    # ------------------------------------------------------------------ single network
    @x64
    def spectral_filter(self, t: float) -> jax.Array:
        """f_t(l) (r,) on the range eigenvalues of the driving kernel: ``F_t = Q diag(f_t) Q^T``.

        Continuous: ``-expm1(-eta l t) / l``; discrete: ``(1 - (1 - eta l)^t) / l``;
        t = inf: ``1 / l`` (NaN everywhere when discrete GD diverges). The null
        space (``l <= p eps l_max``) is left out at every t: Z_t never sees it,
        and large t agree with t = inf.
        """
        l, eta = self._l, self.eta
        if np.isinf(t):
            return 1.0 / l if self.stability.converges else jnp.full_like(l, jnp.nan)
        if self.time == "continuous":
            return _continuous_filter(l, eta, t)
        return _discrete_filter(l, eta, t)

    # ------------------------------------------------------------------ target network
    @x64
    def transfer(self, t: float) -> jax.Array:
        """``T_t = eta W_t[:r]`` (r, r): ``a_t = -T_t Q^T rhat``, ``Z_t = Theta_*X Q T_t Q^T``."""
        if t == 0:
            return jnp.zeros((self.rank, self.rank))
        if np.isinf(t):
            return self._fixed_point()
        _, w = self._semigroup(float(t))
        return self.eta * w[: self.rank]

    def _fixed_point(self) -> jax.Array:
        """t = inf: ``(L - S)^{-1}`` (tau > 0) or ``L^{-1}`` (tau = 0, the target stays at
        initialisation and the primary regresses onto ``r + G P Q0''``); NaN when the
        dynamics diverge or the system is singular (no unique fixed point)."""
        if self._fixed is not None:
            return self._fixed
        r = self.rank
        if not self.stability.converges:
            self._fixed = jnp.full((r, r), jnp.nan)
        elif self.target.tau == 0:
            self._fixed = jnp.diag(1.0 / self._l)
        else:
            a = jnp.diag(self._l) - self.spectrum.bootstrap
            cond = float(jnp.linalg.cond(a)) if r else 1.0
            if not cond < 1.0 / (max(r, 1) * _EPS):
                warnings.warn(
                    f"the TD fixed-point system Q^T A Q = L - S is singular (condition number "
                    f"{cond:.3g}): no unique value exists (e.g. gamma = 1 with no terminal "
                    "transitions); the prediction at t = inf is NaN",
                    DivergenceWarning,
                    stacklevel=6,
                )
                self._fixed = jnp.full((r, r), jnp.nan)
            else:
                self._fixed = jnp.linalg.solve(a, jnp.eye(r))
        return self._fixed

    def _exact(self, t: float) -> tuple[jax.Array, jax.Array]:
        """(E_t (2r, 2r) homogeneous part, W_t (2r, r) forced part) from scratch.

        Continuous: the augmented exponential at ``h = t / 2^j`` with
        ``||M h||_1 <= 1``, then j squarings (one exponential of a large t loses
        accuracy: its Pade scaling sees the forcing block t I as well).
        Discrete: binary powers of the one-step map.
        """
        r = self.rank
        if self.time == "continuous":
            m = _generator(self.spectrum, self.eta, self.target.tau)
            norm = float(jnp.abs(m).sum(axis=0).max()) if r else 0.0
            j = max(0, int(np.ceil(np.log2(t * norm)))) if norm * t > 1 else 0
            value = _van_loan(m, t / 2.0**j)
            for _ in range(j):
                value = _compose(value, value)
            return value
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

    def _semigroup(self, t: float) -> tuple[jax.Array, jax.Array]:
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
        if len(cache) >= 4:  # bound memory (each entry holds 2r x 3r floats); keep the
            cache.pop(sorted(cache)[1])  # smallest time (a grid step) and the latest ones
        cache[t] = value
        return value


@jax.jit
def _compose(first, second):
    """Run `first` then `second` from zero: (E_a, W_a), (E_b, W_b) -> (E_a E_b, W_b + E_b W_a)."""
    e_a, w_a = first
    e_b, w_b = second
    return e_b @ e_a, w_b + e_b @ w_a


@jax.jit
def _van_loan(m, h):
    """(E_h (2r, 2r), W_h (2r, r)) from one exponential of ``[[M h, [I h; 0]], [0, 0]]``."""
    r = m.shape[0] // 2
    aug = jnp.zeros((3 * r, 3 * r), m.dtype)
    aug = aug.at[: 2 * r, : 2 * r].set(m * h).at[:r, 2 * r :].set(jnp.eye(r, dtype=m.dtype) * h)
    full = jax.scipy.linalg.expm(aug)
    return full[: 2 * r, : 2 * r], full[: 2 * r, 2 * r :]


@jax.jit
def _continuous_filter(l, eta, t):
    """``-expm1(-eta l t) / l`` (r,)."""
    return -jnp.expm1(-eta * l * t) / l


@jax.jit
def _discrete_filter(l, eta, t):
    """``(1 - (1 - eta l)^t) / l`` (r,), through log1p where 0 < 1 - eta l < 1."""
    step = 1.0 - eta * l
    contracting = (step > 0) & (step < 1)
    decay = jnp.where(
        contracting,
        -jnp.expm1(t * jnp.log1p(-eta * jnp.where(contracting, l, 0.0))),
        1.0 - jnp.power(step, t),
    )
    return decay / l
