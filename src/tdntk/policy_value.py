"""The policy's value J(pi) with intervals that account for the finite dataset.

The TD-NTK closed form (`tdntk.TDNTK`) gives a Gaussian over Q: the spread of
an ensemble of wide networks over their random initialisations. At t = inf the
TD estimator interpolates the Bellman equations of the data, so that spread
collapses at the data and says nothing about how the estimate would change
with another dataset of the same size: intervals built from it alone cover
the truth almost never (docs/policy-value.md). This module adds the sampling
uncertainty of the data, by a **jackknife over episodes** computed in closed
form:

* the episodes are split into G groups (G = the number of episodes when
  there are at most `max_groups`, else G random groups of nearly equal size);
* for each group g the value is recomputed without it, ``J_(-g)`` (and
  ``V_(-g)(s)`` at every evaluated state): the estimator refitted on the rest,
  reusing the kernels (`FixedPointResampler` for TD at t = inf: one dense
  solve per group; any other schedule goes through `tdntk.TDNTK` again);
* the jackknife variance ``(G - 1) / G sum_g (J_(-g) - mean_g J_(-g))^2``
  (Quenouille, "Notes on bias in estimation", Biometrika 1956; Tukey, "Bias and
  confidence in not-quite large samples", Annals of Mathematical Statistics 1958)
  is added to the ensemble variance ``w^T Cov_Q w``;
* the 95 % interval is ``J +- t_{G-1, 0.975} sqrt(var_ens + var_jack)``.

The jackknife was chosen over a bootstrap over episodes by measured coverage
(benchmarks/bench_coverage.py, docs/policy-value.md: 0.93 to 0.96 against 0.85
to 0.94 for 95 % intervals): on data with distinct continuous inputs (CartPole)
a bootstrap resample only changes which Bellman equations hold (duplicates add
nothing to an interpolating fit), and its variance came out too small; the
jackknife's is conservative in expectation (Efron and Stein, "The jackknife
estimate of variance", Annals of Statistics 1981).

J itself is an average of V over initial states: by default the states where
the dataset's episodes start (each episode counts once, and a group left out
takes its episodes' start states with it), or given states (kept fixed).

Shapes: n transitions, k next inputs per transition, d features, m states,
k' inputs per state (its candidate actions), M = m k' test inputs, G groups.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .data import Transitions
from .dynamics import DivergenceWarning, LearningRateWarning, Schedule
from .predict import TDNTK, as_kernel_fn

with warnings.catch_warnings():  # importing SciPy's sparse and stats adds global filters
    import scipy.sparse
    from scipy import stats

__all__ = [
    "FixedPointResampler",
    "KernelCache",
    "PolicyValue",
    "Difference",
    "episode_groups",
    "jackknife_std",
    "quadratic_std",
    "interval",
    "feasible_range",
    "LEVEL",
]

LEVEL = 0.95


# ---------------------------------------------------------------------- small pieces
def quadratic_std(weights, cov) -> float:
    """``sqrt(w^T C w)`` for (M,) weights and an (M, M) covariance (negative round-off -> 0)."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    c = np.asarray(cov, dtype=np.float64)
    if c.shape != (w.size, w.size):
        raise ValueError(f"quadratic_std: cov must have shape ({w.size}, {w.size}), got {c.shape}")
    return float(np.sqrt(max(float(w @ c @ w), 0.0)))


def jackknife_std(replicates, axis: int = 0) -> np.ndarray:
    """Jackknife standard error ``sqrt((G - 1) / G sum_g (x_g - mean x)^2)`` over `axis`.

    `replicates` holds the statistic recomputed with each of G groups left out.
    """
    x = np.asarray(replicates, dtype=np.float64)
    g = x.shape[axis]
    if g < 2:
        return np.full(np.delete(x.shape, axis), np.nan) if x.ndim > 1 else np.float64(np.nan)
    dev = x - x.mean(axis=axis, keepdims=True)
    return np.sqrt((g - 1) / g * np.sum(dev * dev, axis=axis))


def interval(mean, std, dof, level: float = LEVEL):
    """Central interval ``mean +- t_{dof, (1 + level) / 2} std`` (normal when dof is inf)."""
    q = stats.t.ppf(0.5 + level / 2, dof) if np.isfinite(dof) else stats.norm.ppf(0.5 + level / 2)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return mean - q * std, mean + q * std


def feasible_range(rewards, gamma: float) -> tuple[float, float]:
    """The values a policy can have when every reward lies in [min r, max r] of `rewards`.

    ``V(s) = sum_{t < T} gamma^t r_t`` with T >= 1 steps (an episode may end at
    any step): at least ``r_min`` (if r_min >= 0) or ``r_min / (1 - gamma)``,
    at most ``r_max`` (if r_max <= 0) or ``r_max / (1 - gamma)``; with
    gamma = 1 an unbounded side is infinite.
    """
    r = np.asarray(rewards, dtype=np.float64)
    lo, hi = float(r.min()), float(r.max())
    scale = np.inf if gamma >= 1 else 1.0 / (1.0 - gamma)
    low = lo if lo >= 0 else (-np.inf if np.isinf(scale) else lo * scale)
    high = hi if hi <= 0 else (np.inf if np.isinf(scale) else hi * scale)
    return low, high


def episode_groups(episode_ids, max_groups: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """(group of each transition (n,), G): one group per episode when there are at most
    `max_groups` episodes, else `max_groups` groups of nearly equal numbers of episodes
    (episodes assigned by a seeded permutation)."""
    ids = np.asarray(episode_ids)
    _, episode = np.unique(ids, return_inverse=True)
    num = int(episode.max()) + 1 if episode.size else 0
    if max_groups < 2:
        raise ValueError(f"max_groups must be >= 2, got {max_groups}")
    if num <= max_groups:
        return episode.reshape(-1), num
    order = np.random.default_rng(seed).permutation(num)
    group_of_episode = np.empty(num, dtype=np.int64)
    group_of_episode[order] = np.arange(num) % max_groups
    return group_of_episode[episode.reshape(-1)], int(max_groups)


# ---------------------------------------------------------------------- refits
class FixedPointResampler:
    """The TD fixed point at t = inf for the data reweighted per transition, kernels once.

    With transition weights c (n,) >= 0 the TD fixed point (`tdntk.dynamics`,
    t = inf with a target network) solves the c-weighted averaged Bellman
    equation at every distinct input u of the data with weight > 0:

        Q(u) = sum_{i: x_i = u} c_i (r_i + g_i sum_j w_ij Q(x''_ij)) / sum_{i: x_i = u} c_i

    with ``Q = Theta(., U) beta``: one dense (|U| x |U|) solve, where
    `tdntk.TDNTK` would factorise n x n kernels and check the dynamics'
    stability. With all weights 1 it equals ``TDNTK(...).predict(x, inf).mean``
    when the TD dynamics converge (tests/test_policy_value.py checks both, and
    duplicated transitions against weights). Weight 0 leaves a transition out
    (the jackknife); integer weights repeat it (a bootstrap).

    Args:
        kernels: an `MLP` or a callable ``(x1, x2) -> (nngp, ntk)``.
        data: the `Transitions` (the target policy's next inputs and weights).
        x_test: (M, d) inputs to predict.
    """

    def __init__(self, kernels, data: Transitions, x_test):
        if not isinstance(data, Transitions):
            raise TypeError(f"data must be a Transitions, got {type(data).__name__}")
        x_test = np.asarray(x_test, dtype=np.float64)
        if x_test.ndim != 2 or x_test.shape[1] != data.input_dim:
            raise ValueError(f"x_test must have shape (M, {data.input_dim}), got {x_test.shape}")
        fn = as_kernel_fn(kernels)
        n, k = data.n, data.k
        self.data = data
        train, self._x_index = np.unique(data.x, axis=0, return_inverse=True)
        self._x_index = self._x_index.reshape(-1)
        others, other_index = np.unique(
            np.concatenate([data.x_next_flat, x_test]), axis=0, return_inverse=True
        )
        other_index = other_index.reshape(-1)
        self._next_index = other_index[: n * k].reshape(n, k)
        self._test_index = other_index[n * k :]
        self._ntk_train = np.asarray(fn(train, train)[1], dtype=np.float64)
        self._ntk_other = np.asarray(fn(others, train)[1], dtype=np.float64)
        self.num_train_inputs = train.shape[0]

    def predict(self, weights=None) -> np.ndarray:
        """Q at x_test (M,) of the fixed point with transition weights (n,) (None: all 1).

        NaN everywhere when the weighted system is singular (no unique fixed point).
        """
        data = self.data
        c = np.ones(data.n) if weights is None else np.asarray(weights, dtype=np.float64)
        if c.shape != (data.n,) or np.any(c < 0) or not np.all(np.isfinite(c)):
            raise ValueError(f"weights must be (n,) = ({data.n},) finite values >= 0")
        on = np.flatnonzero(c > 0)
        if on.size == 0:
            raise ValueError("weights: every transition has weight 0")
        inputs, row = np.unique(self._x_index[on], return_inverse=True)
        row = row.reshape(-1)
        total = np.bincount(row, weights=c[on], minlength=inputs.size)
        reward = np.bincount(row, weights=c[on] * data.reward[on], minlength=inputs.size) / total
        k = data.k
        coef = (c[on] * data.discount[on] / total[row])[:, None] * data.next_weights[on]
        mix = scipy.sparse.csr_matrix(
            (coef.reshape(-1), (np.repeat(row, k), self._next_index[on].reshape(-1))),
            shape=(inputs.size, self._ntk_other.shape[0]),
        )
        # sum_j w_ij Theta(x''_ij, U) for the kept rows, then the columns of the kept inputs
        system = self._ntk_train[np.ix_(inputs, inputs)] - (mix @ self._ntk_other)[:, inputs]
        try:
            beta = np.linalg.solve(system, reward)
        except np.linalg.LinAlgError:
            return np.full(self._test_index.size, np.nan)
        full = np.zeros(self.num_train_inputs)
        full[inputs] = beta
        return (self._ntk_other @ full)[self._test_index]


def refit_td_inf(kernels, data: Transitions, x_test) -> Callable[[np.ndarray], np.ndarray]:
    """``keep (n,) bool -> Q (M,)`` at x_test (M, d): the TD fixed point at t = inf on the
    kept transitions."""
    resampler = FixedPointResampler(kernels, data, x_test)
    return lambda keep: resampler.predict(np.asarray(keep, dtype=np.float64))


class KernelCache:
    """The kernels of a fixed set of inputs, computed once and looked up by value.

    ``cache.kernels(x1, x2)`` returns the (nngp, ntk) blocks for rows that are among
    the cached inputs (a KeyError otherwise), so `TDNTK` can be rebuilt on subsets
    without recomputing (or recompiling) kernels. Memory: 2 (u x u) float64 for u
    distinct inputs.
    """

    def __init__(self, kernels, inputs):
        fn = as_kernel_fn(kernels)
        unique = np.unique(np.asarray(inputs, dtype=np.float64) + 0.0, axis=0)
        self._index = {row.tobytes(): i for i, row in enumerate(unique)}
        nngp, ntk = fn(unique, unique)
        self.nngp = np.asarray(nngp, dtype=np.float64)
        self.ntk = np.asarray(ntk, dtype=np.float64)

    def _rows(self, x) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float64) + 0.0)
        return np.array([self._index[row.tobytes()] for row in x], dtype=np.int64)

    def kernels(self, x1, x2=None) -> tuple[np.ndarray, np.ndarray]:
        i1 = self._rows(x1)
        i2 = i1 if x2 is None else self._rows(x2)
        return self.nngp[np.ix_(i1, i2)], self.ntk[np.ix_(i1, i2)]

    def kernel_diagonals(self, x) -> tuple[np.ndarray, np.ndarray]:
        i = self._rows(x)
        return self.nngp[i, i], self.ntk[i, i]


def refit_general(kernels, data: Transitions, schedule: Schedule, t: float, x_test, solver="dense"):
    """``keep (n,) bool -> Q (M,)`` at x_test (M, d): any schedule and time, by building
    `TDNTK` on the kept transitions. Dense (``solver="dense"``): kernels from one
    `KernelCache` over every input, the factorisation and the dynamics recomputed each
    time. Matrix-free (a `tdntk.solvers.choice.Krylov`): nothing cached (it would not
    fit), each refit computes its kernel products anew."""
    if solver == "dense":
        kernels = KernelCache(kernels, np.concatenate([data.x, data.x_next_flat, x_test]))

    def refit(keep):
        with warnings.catch_warnings():  # rates and stability of a subset: not the user's run
            warnings.simplefilter("ignore", LearningRateWarning)
            warnings.simplefilter("ignore", DivergenceWarning)
            model = TDNTK(kernels, data.subset(np.flatnonzero(keep)), schedule, solver)
            return model.predict(x_test, t, full_cov=False).mean[0]

    return refit


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class PolicyValue:
    """J(pi) = E_{s0}[V(s0)] with its uncertainty.

    Attributes:
        mean: the estimate (the TD-NTK ensemble mean averaged over initial states).
        std: total standard error ``sqrt(ensemble_std^2 + sampling_std^2)``.
        interval_95: (lo, hi) = mean -+ t_{dof, 0.975} std.
        method: how the interval was made, in words.
        ensemble_std: ``sqrt(w^T Cov_Q w)``, the spread over initialisations.
        sampling_std: the jackknife standard error over episodes (0 when not computed).
        dof: degrees of freedom of the t quantile (G - 1; inf: normal).
        replicates: (G,) J with each group left out (None when not computed).
        groups: (G,) the group each replicate left out (`episode_groups` labels).
        initial_states: how many states the average runs over, and where they come from.
        feasible: whether the mean lies in the feasible range of the observed rewards.
        feasible_range: (lo, hi) of `tdntk.policy_value.feasible_range`.
    """

    mean: float
    std: float
    interval_95: tuple[float, float]
    method: str
    ensemble_std: float
    sampling_std: float
    dof: float
    replicates: np.ndarray | None = field(default=None, repr=False)
    groups: np.ndarray | None = field(default=None, repr=False)
    initial_states: dict = field(default_factory=dict)
    feasible: bool = True
    feasible_range: tuple[float, float] = (-np.inf, np.inf)

    def as_dict(self) -> dict:
        """JSON-ready: the summary.json entry ``policy_value``."""
        return {
            "mean": float(self.mean),
            "std": float(self.std),
            "interval_95": [float(v) for v in self.interval_95],
            "method": self.method,
            "ensemble_std": float(self.ensemble_std),
            "sampling_std": float(self.sampling_std),
            "dof": float(self.dof),
            "initial_states": dict(self.initial_states),
            "feasible": bool(self.feasible),
            "feasible_range": [float(v) for v in self.feasible_range],
        }


@dataclass(frozen=True)
class Difference:
    """J_a - J_b for two policies evaluated on the same data.

    Attributes:
        a, b: the policies' names.
        mean: J_a - J_b.
        std: ``sqrt(var_ens_a + var_ens_b + var_jack(J_a - J_b))``: the jackknife of
            the difference uses the same groups for both, so it keeps their
            correlation through the shared data; the two ensembles are taken as
            independent (separately initialised).
        interval_95: (lo, hi).
        prob_greater: P(J_a > J_b) under the same t distribution as the interval,
            ``T_dof(mean / std)``: a confidence statement about the sign, not a
            Bayesian posterior.
        dof: degrees of freedom.
    """

    a: str
    b: str
    mean: float
    std: float
    interval_95: tuple[float, float]
    prob_greater: float
    dof: float

    def as_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "mean": float(self.mean),
            "std": float(self.std),
            "interval_95": [float(v) for v in self.interval_95],
            "prob_a_greater": float(self.prob_greater),
            "dof": float(self.dof),
        }


def difference(name_a: str, a: PolicyValue, name_b: str, b: PolicyValue) -> Difference:
    """`Difference` of two `PolicyValue`s from the same data and jackknife groups (the
    groups both kept: a refit without a unique fixed point drops its group)."""
    mean = float(a.mean - b.mean)
    var = a.ensemble_std**2 + b.ensemble_std**2
    dof = min(a.dof, b.dof)
    if a.replicates is not None and b.replicates is not None:
        ga = np.arange(a.replicates.size) if a.groups is None else np.asarray(a.groups)
        gb = np.arange(b.replicates.size) if b.groups is None else np.asarray(b.groups)
        common, ia, ib = np.intersect1d(ga, gb, return_indices=True)
        if common.size < 2:
            raise ValueError("difference: the two values share fewer than 2 jackknife groups")
        var += float(jackknife_std(a.replicates[ia] - b.replicates[ib])) ** 2
        dof = float(common.size - 1)
    std = float(np.sqrt(var))
    lo, hi = interval(mean, std, dof)
    if std > 0:
        z = mean / std
        prob = float(stats.t.cdf(z, dof) if np.isfinite(dof) else stats.norm.cdf(z))
    else:
        prob = 1.0 if mean > 0 else (0.0 if mean < 0 else 0.5)
    return Difference(name_a, name_b, mean, std, (float(lo), float(hi)), prob, dof)
