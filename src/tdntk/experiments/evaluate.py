"""`evaluate`: value estimates with uncertainty for a policy from offline data.

The TD-trained ensemble of infinitely wide Q-networks (`TDNTK`, paper eq. 10
and 52) gives a Gaussian over Q at any training time t. The value of a state
is ``V(s) = sum_a pi(a|s) Q(s, a)`` (or ``Q(s, pi(s))``), a linear map w of
the Q's, so its mean is ``w . mean_Q`` and its variance ``w^T Cov_Q w`` over
the state's (s, a) inputs (the full covariance of the Q's combined).

The policy's value J(pi) = E_{s0}[V(s0)] averages V over initial states
(the dataset's episode starts, or given states) with the std of the same
quadratic form over all of them. Intervals (`tdntk.policy_value`) add to the
ensemble's variance the sampling variance of the data, by a jackknife over
groups of episodes recomputed in closed form; `compare` evaluates several
policies on the same data and the differences of their values.

Before anything large is built, the memory of the dense route is estimated
on the reduced data (`memory_estimate`: kernels on the distinct inputs, the
factorisation, the test blocks); ``solver="auto"`` takes it when it fits the
limit (80 % of the available memory, or ``memory_limit_gib``) and the
matrix-free route otherwise (`tdntk.solvers.krylov`, its kernels cached in
what is left when they fit). `MemoryLimitError` says how many transitions
would fit when even that cannot run (``max_transitions`` subsamples
reproducibly); summary.json says which route ran, with its tolerance and
iterations.

Shapes: n transitions, k next inputs per transition, d features, m states,
o observation features, E members.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import psutil

from ..data import Transitions
from ..datasets.features import Features, next_inputs, to_transitions
from ..datasets.minari_io import load_minari
from ..datasets.offline import OfflineData, infer_spaces, load_npz
from ..datasets.policies import is_stochastic, load_policy
from ..datasets.spaces import components, has_discrete_leaf, readable_names
from ..dynamics import Schedule, SoftTarget
from ..files import arrays_digest, file_digest, open_output, settings_digest
from ..nets import MLP
from ..policy_value import (
    LEVEL,
    FixedPointResampler,
    PolicyValue,
    episode_groups,
    feasible_range,
    interval,
    jackknife_std,
    quadratic_std,
    refit_general,
)
from ..predict import TDNTK
from ..reduced import reduce_transitions
from ..solvers.choice import Krylov, dense_bytes, krylov_bytes
from ..training import CHECKPOINT_EVERY_S, train_ensemble
from .command import Command, checkpoint_option, overwrite_option, progress_option

__all__ = [
    "EvaluateConfig",
    "EvaluateCommand",
    "ValueEstimate",
    "MemoryLimitError",
    "evaluate",
    "run",
    "memory_estimate",
    "machine_memory",
    "state_values",
    "initial_inputs",
    "COMMAND",
]

GIB = 2.0**30
# Default learning rate: this fraction of eq. 11's critical rate. At the critical rate
# itself eta * l_max is close to 2 (l_min ~ 0 for TD data), the edge of stability of
# gradient descent, where finite networks (whose empirical NTK differs) can diverge.
DEFAULT_RATE_FRACTION = 0.5
ESTIMATOR_NAMES = {
    "td": "TD: semi-gradient TD with a soft target network (paper sec. 4.2, 'target network'); "
    "at t = inf the averaged Bellman equation holds at every distinct input",
    "residual-gradient": "residual gradient: one Q-network with gradients through both terms "
    "(paper sec. 4.1, 'single Q-network'); minimises the squared Bellman residual, biased "
    "when an input has several observed next states",
}
INTERVALS = {
    "jackknife": "ensemble variance + jackknife over groups of episodes (the estimator refitted "
    "without each group, in closed form); t quantile with G - 1 degrees of freedom",
    "ensemble": "ensemble variance only (the spread over initialisations; it ignores the "
    "finite sample and collapses at the data)",
}
# Inputs of the J quadratic form predicted with one full covariance (above: blocks of pairs).
_FULL_COV_INPUTS = 4096


class MemoryLimitError(ValueError):
    """The dense kernels for the dataset would not fit in memory (a too-large input)."""


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of `evaluate` (the `tdntk evaluate` options)."""

    gamma: float = field(default=0.99, metadata={"help": "Discount factor in [0, 1]."})
    t: float = field(
        default=float("inf"),
        metadata={"help": "Training time in gradient steps (paper: 2^16); inf = converged."},
    )
    estimator: Literal["td", "residual-gradient"] = field(
        default="td",
        metadata={
            "help": "td: TD with a soft target network (semi-gradient; the fixed point of "
            "policy evaluation); residual-gradient: a single Q-network with gradients "
            "through both terms (biased on stochastic data)."
        },
    )
    target_tau: float = field(
        default=1.0,
        metadata={
            "help": "td only: the target network's soft-update rate tau (eq. 12): a fraction "
            "per step in [0, 1] for discrete time, a rate >= 0 in continuous time."
        },
    )
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "eta; None: half the critical learning rate of eq. 11 for the data."},
    )
    loss: Literal["sum", "mean"] = field(
        default="sum", metadata={"help": "TD loss reduction: sum (eq. 6) or mean."}
    )
    time: Literal["continuous", "discrete"] = field(
        default="continuous",
        metadata={"help": "continuous (gradient flow) or discrete (exact linearised GD)."},
    )
    net: MLP = field(
        default=MLP(depth=2, width=512), metadata={"help": "The network (eq. 3-4): its fields."}
    )
    standardize: bool = field(
        default=True, metadata={"help": "Standardise observations with dataset mean and std."}
    )
    scale_actions: bool = field(
        default=True, metadata={"help": "Scale bounded Box actions to [-1, 1]."}
    )
    interval: Literal["jackknife", "ensemble"] = field(
        default="jackknife",
        metadata={
            "help": "jackknife: ensemble variance + a jackknife over groups of episodes "
            "(intervals that cover the truth, docs/policy-value.md); ensemble: the "
            "ensemble's variance alone."
        },
    )
    groups: int = field(
        default=20,
        metadata={"help": "jackknife: at most this many groups of episodes (one refit each)."},
    )
    action_samples: int = field(
        default=1,
        metadata={
            "help": "Policies without action_probs (e.g. stochastic Box-action policies): K > 1 "
            "sampled actions per state, weights 1/K (policy.sample(obs) or K calls)."
        },
    )
    ensemble: int = field(
        default=0, metadata={"help": "Also train this many finite networks (0: none)."}
    )
    max_transitions: int | None = field(
        default=None, metadata={"help": "Subsample at most this many transitions (seeded)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the subsample and the ensemble."})
    solver: Literal["auto", "dense", "krylov"] = field(
        default="auto",
        metadata={
            "help": "dense (kernels as matrices), krylov (matrix-free, for large data) or auto "
            "(dense when it fits the memory limit)."
        },
    )
    tol: float = field(
        default=1e-8, metadata={"help": "krylov: relative tolerance of every Krylov solve."}
    )
    rank: int = field(
        default=256,
        metadata={"help": "krylov: rank of the projection behind the variances."},
    )
    memory_limit_gib: float | None = field(
        default=None,
        metadata={"help": "Memory the kernels may use (GiB); None: 80% of available memory."},
    )

    def __post_init__(self):
        if not np.isfinite(self.gamma) or not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma!r}")
        if np.isnan(self.t) or self.t < 0:
            raise ValueError(f"t must be >= 0 (inf allowed), got {self.t!r}")
        if self.estimator not in ESTIMATOR_NAMES:
            raise ValueError(
                f"estimator must be one of {tuple(ESTIMATOR_NAMES)}, got {self.estimator!r}"
            )
        if not isinstance(self.net, MLP):
            raise ValueError(f"net must be an MLP, got {self.net!r}")
        SoftTarget(self.target_tau)
        if self.time == "discrete" and self.target_tau > 1:
            raise ValueError(
                f"target_tau must lie in [0, 1] with time='discrete' (a fraction per step, "
                f"eq. 12), got {self.target_tau}"
            )
        self.schedule(1.0 if self.learning_rate is None else self.learning_rate)  # validates
        Krylov(tol=self.tol, rank=self.rank)  # validates
        if self.interval not in INTERVALS:
            raise ValueError(f"interval must be one of {tuple(INTERVALS)}, got {self.interval!r}")
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 2:
            raise ValueError(f"groups must be an integer >= 2, got {self.groups!r}")
        if (
            isinstance(self.action_samples, bool)
            or not isinstance(self.action_samples, int)
            or self.action_samples < 1
        ):
            raise ValueError(f"action_samples must be an integer >= 1, got {self.action_samples!r}")
        if self.ensemble < 0:
            raise ValueError(f"ensemble must be >= 0, got {self.ensemble}")
        if self.ensemble and not np.isfinite(self.t):
            raise ValueError("ensemble: finite networks need a finite t (number of steps)")
        if self.ensemble and self.t != round(self.t):
            raise ValueError(f"ensemble: t must be a whole number of steps, got {self.t}")
        if self.max_transitions is not None and self.max_transitions < 1:
            raise ValueError(f"max_transitions must be >= 1, got {self.max_transitions}")
        if self.memory_limit_gib is not None and not self.memory_limit_gib > 0:
            raise ValueError(f"memory_limit_gib must be > 0, got {self.memory_limit_gib}")

    def target(self) -> SoftTarget | None:
        """The target network of the estimator (None: residual gradient)."""
        return SoftTarget(self.target_tau) if self.estimator == "td" else None

    def schedule(self, learning_rate: float) -> Schedule:
        """The `Schedule` of these settings at `learning_rate`."""
        return Schedule(learning_rate, self.target(), self.time, self.loss)


@dataclass(frozen=True)
class ValueEstimate:
    """Per-state values of the evaluated policy, and its value J.

    Attributes:
        states: (m, o) observations (raw, flattened as in the data).
        value_mean: (m,) TD-NTK ensemble mean of V at time t.
        value_std: (m,) its standard deviation over initialisations (the ensemble's).
        ensemble_mean: (m,) mean over the finite networks, or None.
        ensemble_std: (m,) std over the finite networks (ddof=1), or None.
        summary: settings, data description, learning rates, memory, timings,
            ``policy_value`` and ``warnings``.
        observation_space: the (unflattened) observation space, or None; names
            the state columns of `write_evaluation`.
        sampling_std: (m,) jackknife standard error of V over episodes (zeros with
            ``interval="ensemble"`` or fewer than 2 episodes).
        lower, upper: (m,) the 95 % interval of V(s) (`tdntk.policy_value.interval`).
        feasible: (m,) whether value_mean lies in the feasible range of the rewards.
        policy_value: the `PolicyValue` J(pi) (None when it could not be formed).
        replicates: (G, m) V with each group of episodes left out, or None.
    """

    states: np.ndarray
    value_mean: np.ndarray
    value_std: np.ndarray
    ensemble_mean: np.ndarray | None
    ensemble_std: np.ndarray | None
    summary: dict
    observation_space: object | None = None
    sampling_std: np.ndarray | None = None
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    feasible: np.ndarray | None = None
    policy_value: PolicyValue | None = None
    replicates: np.ndarray | None = field(default=None, repr=False)


# ---------------------------------------------------------------------- memory
def machine_memory() -> tuple[int, int]:
    """(available, total) bytes of this machine's memory (psutil)."""
    mem = psutil.virtual_memory()
    return int(mem.available), int(mem.total)


def memory_estimate(n_inputs: int, p: int, m_chunk: int, td_finite_t: bool) -> int:
    """Bytes the dense route needs at peak: `tdntk.solvers.choice.dense_bytes` for N
    distinct inputs and p reduced coordinates, plus the test blocks of m_chunk inputs."""
    return dense_bytes(n_inputs, p, td_finite_t) + 8 * (3 * m_chunk * n_inputs + 2 * m_chunk**2)


def _largest_fitting(limit: float, n: int, n_inputs: int, p: int, m_chunk: int, td: bool) -> int:
    """The largest number of transitions whose dense route fits in `limit` bytes, the
    distinct inputs and coordinates growing in proportion to the transitions (>= 1)."""

    def need(size: int) -> int:
        scale = size / n
        return memory_estimate(int(n_inputs * scale), int(p * scale), m_chunk, td)

    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if need(mid) <= limit else (lo, mid - 1)
    return lo


def refit_memory(n_inputs: int, m_test: int, closed_form: bool) -> int:
    """Bytes of the jackknife's dense refits for N distinct inputs and m_test test inputs.

    Closed form (TD at t = inf, `tdntk.policy_value.FixedPointResampler`): NTK columns
    at the training inputs for the training, next and test inputs, and one subset's
    system, at most ``8 (2 N^2 + 2 (N + m_test) N)``. Otherwise (`KernelCache` + one
    `TDNTK` at a time): the cached NNGP and NTK over all inputs, ``16 (N + m_test)^2``.
    """
    if closed_form:
        return int(8 * (2.0 * n_inputs * n_inputs + 2.0 * (n_inputs + m_test) * n_inputs))
    return int(16 * float(n_inputs + m_test) ** 2)


def _choose_solver(cfg: EvaluateConfig, transitions: Transitions, m_chunk: int, m_test: int = 0):
    """(solver for `TDNTK`, memory info): dense when it (and, given m_test > 0, the
    jackknife's dense refits) fit the limit or it is asked for, else the matrix-free
    route (whose refits are matrix-free too); `MemoryLimitError` when neither fits."""
    td = cfg.estimator == "td"
    red = reduce_transitions(transitions, td)
    n_inputs, p = red.inputs.shape[0], red.p
    available, total = machine_memory()
    limit = cfg.memory_limit_gib * GIB if cfg.memory_limit_gib is not None else 0.8 * available
    dense_need = memory_estimate(n_inputs, p, m_chunk, td and np.isfinite(cfg.t))
    if m_test:
        closed = td and np.isinf(cfg.t)  # the model's kernels are freed before the refits'
        refits = refit_memory(n_inputs, m_test, closed)
        dense_need = max(dense_need, refits) if closed else dense_need + refits
    krylov_need = krylov_bytes(n_inputs, p, cfg.rank, 2048, cached=False)
    info = {"distinct_inputs": n_inputs, "coordinates": p, "dense_estimate_bytes": dense_need,
            "krylov_estimate_bytes": krylov_need, "limit_bytes": int(limit),
            "available_bytes": available, "total_bytes": total}  # fmt: skip
    if cfg.solver == "dense" or (cfg.solver == "auto" and dense_need <= limit):
        if dense_need > limit:
            fit = _largest_fitting(limit, transitions.n, n_inputs, p, m_chunk, td)
            raise MemoryLimitError(
                f"evaluate: the dense route for n={transitions.n} transitions ({n_inputs} "
                f"distinct inputs{', with the jackknife refits' if m_test else ''}) needs "
                f"about {dense_need / GIB:.2f} GiB, above the limit of {limit / GIB:.2f} GiB "
                f"(this machine: {available / GIB:.2f} GiB available of {total / GIB:.2f} "
                f"GiB). Use --solver krylov (matrix-free), subsample with --max-transitions "
                f"{fit} (chosen reproducibly with --seed), or raise --memory-limit-gib if "
                "more memory is free."
            )
        return "dense", info
    if krylov_need > limit:
        raise MemoryLimitError(
            f"evaluate: even the matrix-free route for n={transitions.n} transitions "
            f"({n_inputs} distinct inputs, {p} coordinates) needs about "
            f"{krylov_need / GIB:.2f} GiB (its rank-{cfg.rank} projection and Krylov bases), "
            f"above the limit of {limit / GIB:.2f} GiB: lower --rank, subsample with "
            "--max-transitions, or raise --memory-limit-gib."
        )
    return Krylov(tol=cfg.tol, rank=cfg.rank, cache_bytes=int(limit - krylov_need)), info


# ---------------------------------------------------------------------- the model
def _build_model(cfg: EvaluateConfig, transitions: Transitions, solver) -> tuple[TDNTK, float]:
    """The TDNTK at cfg.learning_rate, or at `DEFAULT_RATE_FRACTION` of the critical rate
    (eq. 11, read off the same factorisation) when it is None."""
    model = TDNTK(cfg.net, transitions, cfg.schedule(cfg.learning_rate or 1.0), solver)
    if cfg.learning_rate is not None:
        return model, cfg.learning_rate
    rate = DEFAULT_RATE_FRACTION * model.critical_learning_rate
    return model.with_schedule(cfg.schedule(rate)), rate


# ---------------------------------------------------------------------- values
def state_values(model: TDNTK, x_test, weights, t: float, chunk: int) -> tuple[np.ndarray, ...]:
    """Mean and std of ``V(s_i) = sum_j w_ij Q(x_ij)`` at time t.

    Args:
        x_test: (m, k, d) inputs of each state's candidate actions.
        weights: (m, k) their probabilities (ones for k = 1).
        chunk: states per `TDNTK.predict` call (each state's k inputs stay together,
            so its k x k covariance block is exact).
    Returns:
        mean (m,), std (m,).
    """
    m, k, d = x_test.shape
    mean = np.empty(m)
    var = np.empty(m)
    for start in range(0, m, chunk):
        stop = min(start + chunk, m)
        w = weights[start:stop]
        pred = model.predict(x_test[start:stop].reshape(-1, d), t, full_cov=True)
        mean[start:stop] = np.einsum("ik,ik->i", w, pred.mean[0].reshape(-1, k))
        c = stop - start
        cov = pred.cov[0].reshape(c, k, c, k)
        blocks = cov[np.arange(c), :, np.arange(c), :]  # (c, k, k) per-state blocks
        var[start:stop] = np.einsum("ik,ikl,il->i", w, blocks, w)
    return mean, np.sqrt(np.maximum(var, 0.0))


def _test_states(
    data: OfflineData,
    transitions: Transitions,
    features,
    policy,
    action_space,
    states,
    action_samples: int = 1,
):
    """(states (m, o), x (m, k, d), weights (m, k), source description).

    From the data, a state repeated with the same inputs and weights (tabular
    data revisits states) is evaluated once (`_distinct`).
    """
    if states is not None:
        states, x, w = _given_state_inputs(
            data, states, "states", features, policy, action_space, action_samples
        )
        return states, x, w, "given states"
    if policy is not None:
        x, w = next_inputs(
            data.observations, features, policy=policy, action_space=action_space,
            action_samples=action_samples,
        )  # fmt: skip
        return _distinct(data.observations, x, w, "the data's observations")
    keep = ~data.terminated
    if not np.any(keep):
        raise ValueError("every transition is terminated: no non-terminal next states to evaluate")
    return _distinct(
        data.next_observations[keep],
        transitions.x_next[keep],
        transitions.next_weights[keep],
        "the data's non-terminal next observations (where the behaviour policy is recorded)",
    )


def _distinct(states, x, w, source: str):
    """Rows (states (m, o), x (m, k, d), w (m, k) or None) without repeats, first
    occurrences in data order; the source says when repeats were dropped."""
    m = states.shape[0]
    key = [states, x.reshape(m, -1)] + ([] if w is None else [w])
    _, first = np.unique(np.concatenate(key, axis=1), axis=0, return_index=True)
    if first.size == m:
        return states, x, w, source
    keep = np.sort(first)
    source = f"{source}, each distinct one once ({keep.size} of {m})"
    return states[keep], x[keep], (None if w is None else w[keep]), source


def evaluate(
    data: OfflineData,
    config: EvaluateConfig | None = None,
    policy=None,
    states=None,
    progress: bool = False,
    checkpoint_dir=None,
    checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    log=None,
    initial_states=None,
) -> ValueEstimate:
    """Values per state and the policy's value J for `policy` (or the behaviour policy).

    Args:
        data: the transitions.
        config: `EvaluateConfig` (defaults: the TD estimator at t = inf, gamma 0.99,
            2-layer ReLU NTK, standardised observations, jackknife intervals; a
            finite t runs at half the critical learning rate unless one is given).
        policy: ``policy(obs) -> action`` (optionally with ``action_probs``), or a
            policy spec string (`tdntk.datasets.policies.load_policy`); None
            evaluates the behaviour policy from the recorded next actions /
            next-action probabilities.
        states: (m, o) states to evaluate (needs a policy); default: the data's
            observations (with a policy) or its non-terminal next observations.
        progress: progress bar for the finite ensemble.
        checkpoint_dir: the finite ensemble's training checkpoints go to a subfolder
            keyed by its inputs and settings, and resume from there.
        checkpoint_every_s: seconds between those checkpoints.
        log: ``log(message)`` announces each stage (None: silent).
        initial_states: (m0, o) states J averages over (needs a policy); default:
            the first observation of each episode of the data (for the behaviour
            policy Q(s0, a0) at the logged first action, an unbiased draw of V(s0)).
    Returns:
        `ValueEstimate` (``policy_value``: the `PolicyValue` J).
    Raises:
        MemoryLimitError: the dense kernels would not fit (message: estimate,
            machine memory, and the --max-transitions that fits).
        ValueError: a bad setting, policy or states (the message names it).
    """
    cfg = EvaluateConfig() if config is None else config
    if not isinstance(data, OfflineData):
        raise TypeError(f"evaluate: data must be an OfflineData, got {type(data).__name__}")
    timings: dict[str, float] = {}
    start = clock = time.perf_counter()
    policy_name = policy if isinstance(policy, str) else _policy_label(policy, data)
    if isinstance(policy, str):
        policy = load_policy(policy)
    problem = _prepare(data, cfg, policy, states, initial_states)
    chunk = max(1, 2048 // problem.x_test.shape[1])
    n_test = (
        problem.x_test.shape[0] * problem.x_test.shape[1]
        + problem.start_x.shape[0] * problem.start_x.shape[1]
    )
    solver, memory = _choose_solver(
        cfg, problem.transitions, min(chunk, len(problem.states)) * problem.x_test.shape[1],
        n_test if cfg.interval == "jackknife" else 0,
    )  # fmt: skip
    timings["data_and_features"] = time.perf_counter() - clock

    say = log or (lambda message: None)
    say(f"kernels and factorisation: {problem.transitions.n} transitions ...")
    clock = time.perf_counter()
    model, rate = _build_model(cfg, problem.transitions, solver)
    timings["kernels_and_factorisation"] = time.perf_counter() - clock
    say(f"values of {len(problem.states)} states at t = {cfg.t:g} ...")
    clock = time.perf_counter()
    mean, std = state_values(model, problem.x_test, problem.weights, cfg.t, chunk)
    start_q, start_std = _start_values(model, problem, cfg.t)
    timings["predict"] = time.perf_counter() - clock
    clock = time.perf_counter()
    if cfg.interval == "jackknife" and problem.num_groups >= 2:
        say(f"jackknife: {problem.num_groups} refits without a group of episodes each ...")
    spread = _sampling(cfg, model, problem, mean, start_q, solver)
    timings["jackknife"] = time.perf_counter() - clock

    ens_mean = ens_std = ensemble_info = None
    if cfg.ensemble:
        say(f"training {cfg.ensemble} finite networks for {int(cfg.t)} steps ...")
        clock = time.perf_counter()
        ens_mean, ens_std, ensemble_info = _finite_ensemble(
            cfg, problem.transitions, rate, problem.x_test, problem.weights, progress,
            checkpoint_dir, checkpoint_every_s,
        )  # fmt: skip
        timings["ensemble"] = time.perf_counter() - clock
    timings["total"] = time.perf_counter() - start

    bounds = feasible_range(problem.data.rewards, cfg.gamma)
    sampling = spread.state_std
    total = np.sqrt(std**2 + sampling**2)
    lower, upper = interval(mean, total, spread.dof)
    feasible = _inside(mean, bounds)
    value = _policy_value(problem, start_q, start_std, spread, bounds)
    warns = _warnings(problem, cfg, mean, feasible, value, spread, bounds, model)
    summary = {
        "settings": asdict(cfg),
        "policy": policy_name,
        "data": _data_summary(problem, data.n),
        "states": {"count": int(len(problem.states)), "source": problem.source},
        "estimator": {
            "name": cfg.estimator,
            "description": ESTIMATOR_NAMES[cfg.estimator],
            "target_tau": cfg.target_tau if cfg.estimator == "td" else None,
            "converges": bool(model.dynamics.converges),
            "growth": float(model.dynamics.stability.growth),
        },
        "learning_rate": rate,
        "learning_rate_source": (
            "given"
            if cfg.learning_rate is not None
            else f"{DEFAULT_RATE_FRACTION:g} x critical (eq. 11)"
        ),
        "critical_learning_rate": model.critical_learning_rate,
        "max_stable_learning_rate": model.max_stable_learning_rate,
        "memory": memory,
        "solver": _solver_summary(model),
        "timings_s": timings,
        "policy_value": value.as_dict(),
        "interval": spread.info,
        "feasible_range": [float(b) for b in bounds],
        "values": {
            "mean_of_means": float(np.mean(mean)),
            "mean_std": float(np.mean(std)),
            "mean_sampling_std": float(np.mean(sampling)),
            "min": float(np.min(mean)),
            "max": float(np.max(mean)),
            "infeasible": int(np.sum(~feasible)),
        },
        "warnings": warns,
        "ensemble": ensemble_info,
    }
    return ValueEstimate(
        problem.states, mean, std, ens_mean, ens_std, summary, problem.observation_space,
        sampling_std=sampling, lower=lower, upper=upper, feasible=feasible, policy_value=value,
        replicates=spread.state_replicates,
    )  # fmt: skip


def _solver_summary(model: TDNTK) -> dict:
    """Which route computed the values, and (matrix-free) its tolerance and iterations."""
    solver = model.solver
    if solver.name == "dense":
        return {"name": "dense", "method": "one eigendecomposition of the driving kernel"}
    report = solver.report
    return {
        "name": "krylov",
        "tolerance": report.tolerance,
        "iterations": report.iterations,
        "projection_rank": report.rank,
        "kernels_cached": report.cached,
        "solves": report.solves,
    }


@dataclass(frozen=True)
class _Problem:
    """The encoded data, the states to evaluate and the initial states of J.

    Attributes:
        data: the (subsampled) `OfflineData`; transitions: its `Transitions`.
        states: (m, o) states; x_test: (m, k, d) their policy's inputs;
        weights: (m, k) the inputs' probabilities; source: where the states come from.
        start_x: (u, k', d) inputs of the distinct initial states (or (s0, a0) pairs);
        start_w: (u, k') their weights; start_index: (m0,) the distinct row of each
        initial state; start_groups: (m0,) the jackknife group of each initial state's
        episode, or None for given states (kept in every refit); start_source: in words.
        groups: (n,) jackknife group of each transition; num_groups: G.
    """

    data: OfflineData
    transitions: Transitions
    states: np.ndarray
    x_test: np.ndarray
    weights: np.ndarray
    source: str
    observation_space: object
    action_space: object
    start_x: np.ndarray
    start_w: np.ndarray
    start_index: np.ndarray
    start_groups: np.ndarray | None
    start_source: str
    groups: np.ndarray
    num_groups: int


def _prepare(
    data: OfflineData, cfg: EvaluateConfig, policy, states, initial_states=None
) -> _Problem:
    """Subsample, encode features, build the transitions and the states to evaluate."""
    subsampled = cfg.max_transitions is not None and data.n > cfg.max_transitions
    if cfg.max_transitions is not None:
        data = data.subsample(cfg.max_transitions, cfg.seed)
    obs_space, action_space = infer_spaces(data)
    features = Features.from_spaces(
        obs_space, action_space, standardize=data if cfg.standardize else None,
        scale_actions=cfg.scale_actions,
    )  # fmt: skip
    transitions = to_transitions(
        data, features, cfg.gamma, policy, action_space, action_samples=cfg.action_samples
    )
    states, x_test, weights, source = _test_states(
        data, transitions, features, policy, action_space, states, cfg.action_samples
    )
    weights = np.ones(x_test.shape[:2]) if weights is None else weights
    groups, num_groups = episode_groups(data.episode_ids, cfg.groups, cfg.seed)
    start = initial_inputs(
        data, transitions, features, policy, action_space, initial_states, cfg.action_samples
    )
    start_x, start_w, start_index, start_episode, start_source = start
    start_groups = None
    if start_episode is not None:
        first = np.r_[0, np.flatnonzero(np.diff(data.episode_ids) != 0) + 1]
        _, episode = np.unique(data.episode_ids, return_inverse=True)
        group_of_episode = np.zeros(int(episode.max()) + 1, dtype=np.int64)
        group_of_episode[episode.reshape(-1)[first]] = groups[first]
        start_groups = group_of_episode[start_episode]
        if subsampled:
            start_source += (
                " (after --max-transitions subsampling the first kept transition of an "
                "episode may not be its start: give --initial-states)"
            )
    return _Problem(
        data, transitions, states, x_test, weights, source, obs_space, action_space,
        start_x, start_w, start_index, start_groups, start_source, groups, num_groups,
    )  # fmt: skip


def initial_inputs(
    data: OfflineData,
    transitions: Transitions,
    features: Features,
    policy,
    action_space,
    initial_states=None,
    action_samples: int = 1,
):
    """The inputs J averages over: (x (u, k', d), w (u, k'), index (m0,), episode (m0,) or None,
    source).

    Default: the first transition of each episode (in data order): with a policy its
    inputs at s0; for the behaviour policy (s0, a0) with the logged first action, whose
    Q is an unbiased draw of V(s0). Given `initial_states` (m0, o) need a policy.
    Repeated rows (tabular data restarts in one state) are kept once (`index`).
    """
    if initial_states is not None:
        states, x, w = _given_state_inputs(
            data, initial_states, "initial_states", features, policy, action_space,
            action_samples,
        )  # fmt: skip
        episode, source = None, f"{len(states)} given initial states"
    else:
        first = np.r_[0, np.flatnonzero(np.diff(data.episode_ids) != 0) + 1]
        _, episode = np.unique(data.episode_ids[first], return_inverse=True)
        episode = episode.reshape(-1)
        if policy is None:
            x, w = transitions.x[first][:, None, :], None
            source = (
                f"the first transition of each of the data's {first.size} episodes: Q(s0, a0) "
                "at the logged first action (behaviour policy)"
            )
        else:
            x, w = next_inputs(
                data.observations[first], features, policy=policy, action_space=action_space,
                action_samples=action_samples,
            )  # fmt: skip
            source = f"the first observation of each of the data's {first.size} episodes"
    w = np.ones(x.shape[:2]) if w is None else w
    rows = np.concatenate([x.reshape(x.shape[0], -1), w], axis=1)
    _, keep, index = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    return x[keep], w[keep], index.reshape(-1), episode, source


def _given_state_inputs(data, states, name, features, policy, action_space, action_samples):
    """(states (m, o), x (m, k, d), w (m, k)): the policy's inputs at given states."""
    states = _check_given_states(data, states, name)
    if policy is None:
        raise ValueError(
            f"{name}: the value of given states needs a policy (the behaviour policy's "
            "actions are only recorded at the data's own states)"
        )
    x, w = next_inputs(
        states, features, policy=policy, action_space=action_space,
        action_samples=action_samples,
    )  # fmt: skip
    return states, x, w


def _check_given_states(data: OfflineData, states, name: str) -> np.ndarray:
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] != data.obs_dim or states.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (m, {data.obs_dim}) with m >= 1 like the data's "
            f"observations, got {states.shape}"
        )
    if not np.all(np.isfinite(states)):
        raise ValueError(f"{name} contain NaN or infinite values")
    if has_discrete_leaf(data.observation_space):
        try:
            components(data.observation_space, states)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    return states


# ---------------------------------------------------------------------- J and intervals
def _start_values(model: TDNTK, problem: _Problem, t: float) -> tuple[np.ndarray, float]:
    """Q at the distinct initial inputs (u k',) and the ensemble std of J (the quadratic
    form of the full covariance with the J weights: counts / m0 times the action weights)."""
    x = problem.start_x.reshape(-1, problem.start_x.shape[-1])
    counts = np.bincount(problem.start_index, minlength=problem.start_x.shape[0])
    w = (counts[:, None] / problem.start_index.size * problem.start_w).reshape(-1)
    if x.shape[0] <= _FULL_COV_INPUTS:
        pred = model.predict(x, t, full_cov=True)
        return pred.mean[0], quadratic_std(w, pred.cov[0])
    # blocks of pairs: Var = sum_ab w_a^T C_ab w_b, C_ab from one prediction over [a; b]
    size = _FULL_COV_INPUTS // 2
    blocks = [slice(i, min(i + size, x.shape[0])) for i in range(0, x.shape[0], size)]
    mean = np.empty(x.shape[0])
    var = 0.0
    for i, a in enumerate(blocks):
        pred = model.predict(x[a], t, full_cov=True)
        mean[a] = pred.mean[0]
        var += float(w[a] @ pred.cov[0] @ w[a])
        for b in blocks[i + 1 :]:
            both = model.predict(np.concatenate([x[a], x[b]]), t, full_cov=True).cov[0]
            na = a.stop - a.start
            var += 2.0 * float(w[a] @ both[:na, na:] @ w[b])
    return mean, float(np.sqrt(max(var, 0.0)))


@dataclass(frozen=True)
class _Spread:
    """The jackknife: state_std (m,), state_replicates (G, m) or None, start_replicates
    (G, u k') or None, dof (G - 1, or inf without a jackknife), info for summary.json,
    groups: (G,) the group left out by each replicate (singular refits dropped)."""

    state_std: np.ndarray
    state_replicates: np.ndarray | None
    start_replicates: np.ndarray | None
    dof: float
    info: dict
    groups: np.ndarray | None = None


def _sampling(
    cfg: EvaluateConfig, model: TDNTK, problem: _Problem, mean, start_q, solver="dense"
) -> _Spread:
    """Refit without each group of episodes (`tdntk.policy_value`): V and the initial Q's."""
    m, k, d = problem.x_test.shape
    info = {"method": cfg.interval, "description": INTERVALS[cfg.interval], "level": LEVEL,
            "groups": problem.num_groups, "episodes": problem.data.num_episodes}  # fmt: skip
    none = _Spread(np.zeros(m), None, None, np.inf, info)
    if cfg.interval != "jackknife":
        return none
    if problem.num_groups < 2:
        info["skipped"] = "fewer than 2 episodes: no jackknife"
        return none
    if np.isinf(cfg.t) and not model.dynamics.converges:
        info["skipped"] = "the dynamics diverge: the values at t = inf are NaN"
        return _Spread(np.full(m, np.nan), None, None, np.inf, info)
    x_all = np.concatenate([problem.x_test.reshape(-1, d), problem.start_x.reshape(-1, d)])
    refit, route = _refit(cfg, model, problem, x_all, mean, start_q, solver)
    info["route"] = route
    split = m * k
    reps_v = np.empty((problem.num_groups, m))
    reps_q = np.empty((problem.num_groups, x_all.shape[0] - split))
    for g in range(problem.num_groups):
        q = refit(problem.groups != g)
        reps_v[g] = np.einsum("ik,ik->i", problem.weights, q[:split].reshape(m, k))
        reps_q[g] = q[split:]
    bad = ~np.all(np.isfinite(reps_v), axis=1) | ~np.all(np.isfinite(reps_q), axis=1)
    info["singular_refits"] = int(bad.sum())
    kept = np.arange(problem.num_groups)
    if bad.any() and (~bad).sum() >= 2:  # a singular refit carries no information
        reps_v, reps_q, kept = reps_v[~bad], reps_q[~bad], kept[~bad]
    dof = float(reps_v.shape[0] - 1)
    return _Spread(jackknife_std(reps_v), reps_v, reps_q, dof, info, kept)


def _refit(cfg, model, problem, x_all, mean, start_q, solver="dense"):
    """(keep (n,) bool -> Q (M,), route in words): the closed-form TD fixed point when it
    reproduces the model's own t = inf prediction, else `TDNTK` refitted per group (with
    the model's matrix-free solver when it has one: no dense refit would fit)."""

    def general():
        return refit_general(cfg.net, problem.transitions, model.schedule, cfg.t, x_all, solver)

    if model.solver.name != "dense":
        return general(), (
            "TDNTK rebuilt on each subset with the matrix-free solver (kernel products "
            "recomputed: each refit costs about as much as the estimate itself)"
        )
    route_general = (
        "TDNTK rebuilt on each subset (kernels looked up in one cache; factorisation and "
        "dynamics recomputed)"
    )
    if not (cfg.estimator == "td" and np.isinf(cfg.t)):
        return general(), route_general
    resampler = FixedPointResampler(cfg.net, problem.transitions, x_all)
    q = resampler.predict()
    m, k, _ = problem.x_test.shape
    v = np.einsum("ik,ik->i", problem.weights, q[: m * k].reshape(m, k))
    full = np.concatenate([mean, start_q])
    gap = float(np.max(np.abs(np.concatenate([v, q[m * k :]]) - full)))
    scale = 1.0 + float(np.max(np.abs(full)))
    if np.isfinite(gap) and gap <= 1e-6 * scale:
        return (
            lambda keep: resampler.predict(np.asarray(keep, dtype=np.float64)),
            f"closed-form TD fixed point on each subset (one dense solve; agrees with TDNTK on "
            f"the full data to {gap:.1e})",
        )
    return general(), route_general + f" (the closed-form solve differed from TDNTK by {gap:.2g})"


def _policy_value(problem: _Problem, start_q, ens_std, spread: _Spread, bounds) -> PolicyValue:
    """J = mean over initial states of V, its ensemble and jackknife stds, the interval."""
    u, k = problem.start_w.shape
    v0 = np.einsum("ik,ik->i", problem.start_w, start_q.reshape(u, k))
    j = float(np.mean(v0[problem.start_index]))
    sampling, reps = 0.0, None
    if spread.start_replicates is not None:
        reps_q = spread.start_replicates.reshape(-1, u, k)
        per_state = np.einsum("gik,ik->gi", reps_q, problem.start_w)[:, problem.start_index]
        if problem.start_groups is None:  # given initial states: kept in every refit
            reps = per_state.mean(axis=1)
        else:  # a group left out takes its episodes' initial states with it
            reps = np.array([
                row[problem.start_groups != g].mean() if np.any(problem.start_groups != g)
                else np.nan for row, g in zip(per_state, spread.groups, strict=True)
            ])  # fmt: skip
        sampling = float(jackknife_std(reps))
    std = float(np.hypot(ens_std, sampling))
    lo, hi = interval(j, std, spread.dof)
    method = (
        f"J +- t({spread.dof:g}) x sqrt(ensemble var + jackknife var over "
        f"{spread.dof + 1:g} groups of episodes)"
        if reps is not None
        else "J +- 1.96 x ensemble std (no sampling uncertainty)"
    )
    return PolicyValue(
        mean=j, std=std, interval_95=(float(lo), float(hi)), method=method,
        ensemble_std=float(ens_std), sampling_std=sampling, dof=spread.dof, replicates=reps,
        groups=None if reps is None else spread.groups,
        initial_states={"count": int(problem.start_index.size), "distinct": int(u),
                        "source": problem.start_source},
        feasible=bool(_inside(np.array([j]), bounds)[0]), feasible_range=bounds,
    )  # fmt: skip


def _inside(values, bounds) -> np.ndarray:
    """(m,) whether values lie in [lo, hi] up to round-off (1e-9 of the scale); NaN (no
    estimate: diverged dynamics, said elsewhere) is not flagged."""
    lo, hi = bounds
    finite = [abs(b) for b in bounds if np.isfinite(b)]
    tol = 1e-9 * (1.0 + (max(finite) if finite else 0.0))
    values = np.asarray(values, dtype=np.float64)
    return np.isnan(values) | ((values >= lo - tol) & (values <= hi + tol))


def _warnings(problem, cfg, mean, feasible, value, spread, bounds, model) -> list[str]:
    """What the numbers cannot say, in words (summary.json ``warnings``; run() prints them)."""
    out = []
    rewards = problem.data.rewards
    if np.ptp(rewards) == 0:
        r = float(rewards[0])
        if r == 0:
            out.append(
                f"every reward in the data is 0 ({rewards.size} transitions): every value "
                "estimate is 0 whatever the policy, so the data cannot tell states or policies "
                "apart (e.g. FrozenLake under a random policy that never reached the goal)"
            )
        else:
            out.append(
                f"every reward in the data equals {r:g}: values differ only through when "
                "episodes terminate"
            )
    lo, hi = bounds
    if np.any(~feasible):
        out.append(
            f"{int(np.sum(~feasible))} of {feasible.size} state values lie outside the "
            f"feasible range [{lo:.4g}, {hi:.4g}] of the observed rewards (r in "
            f"[{rewards.min():.4g}, {rewards.max():.4g}], gamma = {cfg.gamma}); they cannot "
            "be the value of any policy (values.csv: feasible = 0)"
        )
    if not value.feasible:
        out.append(
            f"the policy value J = {value.mean:.4g} lies outside the feasible range "
            f"[{lo:.4g}, {hi:.4g}]"
        )
    if cfg.interval == "jackknife" and "skipped" in spread.info:
        out.append(
            f"no sampling uncertainty: {spread.info['skipped']}; the intervals are the "
            "ensemble's alone and do not cover the truth (docs/policy-value.md)"
        )
    elif cfg.interval == "jackknife" and np.isfinite(spread.dof) and spread.dof < 4:
        out.append(
            f"only {spread.dof + 1:g} groups of episodes: the t quantile with {spread.dof:g} "
            "degrees of freedom makes the intervals wide, and the variance estimate is crude"
        )
    if spread.info.get("singular_refits"):
        out.append(
            f"{spread.info['singular_refits']} of {problem.num_groups} jackknife refits had no "
            "unique fixed point and were left out"
        )
    if cfg.interval == "ensemble":
        out.append(
            "interval = ensemble: the intervals hold the spread over initialisations only; "
            "at t = inf it collapses at the data and ignores the finite sample"
        )
    if not model.dynamics.converges:
        out.append(
            f"the {cfg.estimator} dynamics diverge on this data (growth "
            f"{model.dynamics.stability.growth:.3g}); values at t = inf are NaN"
        )
    return out


def _data_summary(problem: _Problem, n_total: int) -> dict:
    data, transitions = problem.data, problem.transitions
    return {
        "transitions_total": n_total,
        "transitions_used": data.n,
        "episodes": data.num_episodes,
        "terminated": int(data.terminated.sum()),
        "truncated": int(data.truncated.sum()),
        "observation_dim": data.obs_dim,
        "observation_space": str(problem.observation_space),
        "action_space": str(problem.action_space),
        "input_dim": transitions.input_dim,
        "next_inputs_per_transition": transitions.k,
    }


def _policy_label(policy, data: OfflineData) -> str:
    if policy is None:
        if data.next_action_probs is not None:
            return "behaviour (recorded next-action probabilities)"
        return "behaviour (recorded next actions)"
    kind = "stochastic" if is_stochastic(policy) else "deterministic"
    name = getattr(policy, "__qualname__", type(policy).__qualname__)
    return f"{getattr(policy, '__module__', '?')}:{name} ({kind})"


def _finite_ensemble(cfg, transitions, rate, x_test, weights, progress, checkpoint_dir=None,
                     checkpoint_every_s=CHECKPOINT_EVERY_S):  # fmt: skip
    """E finite networks trained by TD gradient descent (`tdntk.training.train_ensemble`),
    checkpointing into a subfolder of `checkpoint_dir` keyed by the inputs and settings."""
    m, k, d = x_test.shape
    steps = int(cfg.t)
    ckpt = None
    if checkpoint_dir is not None:
        t = transitions
        inputs = arrays_digest(t.x, t.reward, t.x_next, t.discount, t.next_weights, x_test, weights)
        key = [asdict(cfg), float(rate), inputs]
        ckpt = Path(checkpoint_dir) / f"ensemble-{settings_digest(key)[:12]}"
    result = train_ensemble(
        cfg.net, transitions, cfg.schedule(rate), steps, cfg.ensemble, x_test.reshape(-1, d),
        seed=cfg.seed, progress=progress, record_steps=[steps], checkpoint_dir=ckpt,
        resume=ckpt is not None, checkpoint_every_s=checkpoint_every_s,
    )  # fmt: skip
    q = np.asarray(result.q[-1], dtype=np.float64).reshape(cfg.ensemble, m, k)
    values = np.einsum("emk,mk->em", q, weights)
    ddof = 1 if cfg.ensemble > 1 else 0
    info = {
        "members": cfg.ensemble,
        "width": cfg.net.width,
        "steps": steps,
        "learning_rate": rate,
        "final_loss_mean": float(np.mean(result.loss[-1])),
        "diverged_members": int(np.sum(~np.isfinite(values).all(axis=1))),
        "wall_time_s": float(result.wall_time),
    }
    return values.mean(axis=0), values.std(axis=0, ddof=ddof), info


# ---------------------------------------------------------------------- the command
@dataclass(frozen=True)
class EvaluateCommand:
    """`tdntk evaluate`: where the data, policy and states come from, where results go,
    and the `EvaluateConfig` settings."""

    data: str | None = field(default=None, metadata={"help": "Dataset .npz (docs/datasets.md)."})
    minari: str | None = field(
        default=None,
        metadata={
            "help": "Instead of --data: a Minari dataset id or folder stored locally "
            "(never downloaded)."
        },
    )
    policy: str | None = field(
        default=None,
        metadata={
            "help": "Target policy PKG.MODULE:FUNC (found in the current folder too), "
            "path/file.py:FUNC or sb3:ALGO:model.zip; default: the behaviour policy from the "
            "recorded next actions (SARSA-style)."
        },
    )
    states: str | None = field(
        default=None,
        metadata={
            "help": "States to evaluate: a .npz with an (m, obs_dim) array 'observations' "
            "(flattened like the data's; needs --policy)."
        },
    )
    initial_states: str | None = field(
        default=None,
        metadata={
            "help": "States the policy value J averages over: a .npz with an (m, obs_dim) "
            "array 'observations' (needs --policy); default: the episodes' first states."
        },
    )
    out: str | None = field(
        default=None,
        metadata={
            "help": "Output folder (values.csv, values.png, summary.json).",
            "required": True,
        },  # fmt: skip
    )
    plot_coordinate: int = field(
        default=0,
        metadata={
            "help": "State column on the plot's x axis: an observation coordinate (Box) or a "
            "decoded component (state_index for a Discrete space)."
        },
    )
    overwrite: bool = overwrite_option()
    checkpoint_every_s: float = checkpoint_option("--ensemble training")
    progress: bool = progress_option()
    settings: EvaluateConfig = field(default=EvaluateConfig(), metadata={"help": "Settings."})

    def __post_init__(self):
        if (self.data is None) == (self.minari is None):
            raise ValueError("give exactly one of --data FILE.npz or --minari DATASET")
        if self.out is None:
            raise ValueError("--out is required: the folder for values.csv and summary.json")


def _load_states(path: Path) -> np.ndarray:
    """The (m, o) array 'observations' of a states .npz."""
    if not path.is_file():
        raise FileNotFoundError(f"states file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "observations" not in archive.files:
                raise ValueError(
                    f"{path}: missing array 'observations' (found: {', '.join(archive.files)})"
                )
            return np.asarray(archive["observations"], dtype=np.float64)
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(f"{path}: cannot read as a .npz archive ({err})") from None


def _log(message: str) -> None:
    print(f"[tdntk evaluate] {message}", flush=True)


def _command_settings(cmd: EvaluateCommand) -> dict:
    """What determines the results: the settings and the input files' SHA-256 (JSON-able)."""
    settings = asdict(cmd)
    for key in ("out", "overwrite", "checkpoint_every_s", "progress"):
        settings.pop(key)
    policy_file = None if cmd.policy is None else cmd.policy.rpartition(":")[0]
    files = {"data": cmd.data, "states": cmd.states, "initial_states": cmd.initial_states,
             "policy": policy_file}  # fmt: skip
    settings["sha256"] = {
        k: file_digest(v) for k, v in files.items() if v is not None and Path(v).is_file()
    }
    return settings


def _value_line(value: dict) -> str:
    lo, hi = value["interval_95"]
    flag = "" if value["feasible"] else " (INFEASIBLE: outside the range of the rewards)"
    return (
        f"policy value J = {value['mean']:.4g} +- {value['std']:.3g} (95 % interval "
        f"[{lo:.4g}, {hi:.4g}]; ensemble std {value['ensemble_std']:.3g}, sampling std "
        f"{value['sampling_std']:.3g}; {value['initial_states']['count']} initial states){flag}"
    )


def run(cmd: EvaluateCommand) -> ValueEstimate:
    """Load the data (and policy, states), evaluate, write the results into ``cmd.out``
    (a new or empty folder, or an earlier `tdntk evaluate` result: `tdntk.files.OutputFolder`);
    an interrupted --ensemble training resumes when the same command is rerun."""
    policy_file = None if cmd.policy is None else cmd.policy.rpartition(":")[0]
    inputs = {"--data": cmd.data, "--states": cmd.states,
              "--initial-states": cmd.initial_states, "--policy": policy_file}  # fmt: skip
    with open_output(cmd.out, "evaluate", _command_settings(cmd), cmd.overwrite, inputs) as folder:
        result = _run(cmd, folder)
        folder.complete()
    _report(cmd, result)
    return result


def _run(cmd: EvaluateCommand, folder) -> ValueEstimate:
    from ..report.evaluate import write_evaluation  # matplotlib only when writing

    policy = None if cmd.policy is None else load_policy(cmd.policy)
    data = load_npz(cmd.data) if cmd.data is not None else load_minari(cmd.minari)
    names = readable_names(data.observation_space, data.obs_dim)
    if not 0 <= cmd.plot_coordinate < len(names):
        shown = ", ".join(names) if len(names) <= 6 else f"{names[0]}, ..., {names[-1]}"
        raise ValueError(
            f"--plot-coordinate must lie in [0, {len(names)}) for the state columns {shown}, "
            f"got {cmd.plot_coordinate}"
        )
    states = None if cmd.states is None else _load_states(Path(cmd.states))
    starts = None if cmd.initial_states is None else _load_states(Path(cmd.initial_states))
    result = evaluate(
        data, cmd.settings, policy, states, progress=cmd.progress,
        checkpoint_dir=folder.trainings, checkpoint_every_s=cmd.checkpoint_every_s,
        log=_log if cmd.progress else None, initial_states=starts,
    )  # fmt: skip
    if cmd.policy is not None:
        result.summary["policy"] = cmd.policy
    result.summary["data_source"] = str(cmd.data or f"minari:{cmd.minari}")
    with folder.staging() as tmp:
        write_evaluation(result, tmp, cmd.plot_coordinate)
    return result


def _report(cmd: EvaluateCommand, result: ValueEstimate) -> None:
    """Print what was written, the time per stage and warnings."""
    s = result.summary
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in s["timings_s"].items() if k != "total")
    _log(f"time per stage: {stages}")
    print(
        f"wrote {cmd.out}: {s['states']['count']} states, {s['data']['transitions_used']} "
        f"transitions; estimator {s['estimator']['name']}; {_solver_text(s['solver'])}; "
        f"critical learning rate {s['critical_learning_rate']:.4g}, learning rate "
        f"{s['learning_rate']:.4g}, {s['timings_s']['total']:.2f} s"
    )
    print(_value_line(s["policy_value"]))
    for text in s["warnings"]:
        print(f"warning: {text}", file=sys.stderr)
    if s["ensemble"] and s["ensemble"]["diverged_members"]:
        print(
            f"warning: {s['ensemble']['diverged_members']} of {s['ensemble']['members']} finite "
            "networks diverged (NaN/inf); lower --learning-rate",
            file=sys.stderr,
        )


def _solver_text(solver: dict) -> str:
    if solver["name"] == "dense":
        return "dense solver"
    return (
        f"matrix-free solver (tolerance {solver['tolerance']:g}, {solver['iterations']} "
        f"kernel products, projection rank {solver['projection_rank']})"
    )


COMMAND = Command(
    config=EvaluateCommand,
    run=run,
    help=(
        "Value estimates with uncertainty for a policy from offline data (TD-NTK): the TD "
        "estimator at t = inf by default; the policy value J with a 95 % interval (ensemble "
        "variance + a jackknife over episodes) in summary.json, per-state means, stds and "
        "intervals in values.csv, a plot. Bad input (a missing array, NaN rewards, an unknown "
        "policy, kernels too large for memory) gives a one-line error and leaves no partial "
        "output."
    ),
)
