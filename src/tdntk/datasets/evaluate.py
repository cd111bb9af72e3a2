"""`evaluate`: value estimates with uncertainty for a policy from offline data.

The TD-trained ensemble of infinitely wide Q-networks (`TDNTK`, paper eq. 10
and 52) gives a Gaussian over Q at any training time t. The value of a state
is ``V(s) = sum_a pi(a|s) Q(s, a)`` (or ``Q(s, pi(s))``), a linear map w of
the Q's, so its mean is ``w . mean_Q`` and its variance ``w^T Cov_Q w`` over
the state's (s, a) inputs (the full covariance of the Q's combined).

Before the dense kernels are built, `memory_estimate` bounds what they need
((n + n k)^2 float64 kernels, the n x n factorisation, the test blocks) and
`evaluate` refuses with `MemoryLimitError` when it exceeds the machine's
available memory, saying how many transitions would fit
(``max_transitions`` subsamples reproducibly).

Shapes: n transitions, k next inputs per transition, d features, m states,
o observation features, E members.
"""

from __future__ import annotations

import io as _io
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import io
from ..data import Transitions
from ..dynamics import LOSSES, TIMES, SoftTarget
from ..nets import ACTIVATIONS, MLP
from ..predict import TDNTK
from .features import Features, next_inputs, to_transitions
from .offline import OfflineData, infer_spaces
from .policies import is_stochastic, load_policy
from .spaces import components, has_discrete_leaf, readable_columns

__all__ = [
    "EvaluateConfig",
    "ValueEstimate",
    "MemoryLimitError",
    "evaluate",
    "write_evaluation",
    "memory_estimate",
    "machine_memory",
    "state_values",
]

GIB = 2.0**30
# Default learning rate: this fraction of eq. 11's critical rate. At the critical rate
# itself eta * l_max is close to 2 (l_min ~ 0 for TD data), the edge of stability of
# gradient descent, where finite networks (whose empirical NTK differs) can diverge.
DEFAULT_RATE_FRACTION = 0.5
ESTIMATORS = ("td", "residual-gradient")
ESTIMATOR_NAMES = {
    "td": "TD: semi-gradient TD with a soft target network (paper sec. 4.2, 'target network'); "
    "at t = inf the averaged Bellman equation holds at every distinct input",
    "residual-gradient": "residual gradient: one Q-network with gradients through both terms "
    "(paper sec. 4.1, 'single Q-network'); minimises the squared Bellman residual, biased "
    "when an input has several observed next states",
}


class MemoryLimitError(RuntimeError):
    """The dense kernels for the dataset would not fit in memory."""


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of `evaluate` (the `tdntk evaluate` options)."""

    gamma: float = field(default=0.99, metadata={"help": "Discount factor in [0, 1]."})
    t: float = field(
        default=float("inf"),
        metadata={"help": "Training time in gradient steps (paper: 2^16); inf = converged."},
    )
    estimator: str = field(
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
    loss: str = field(default="sum", metadata={"help": "TD loss reduction: sum (eq. 6) or mean."})
    time: str = field(
        default="continuous",
        metadata={"help": "continuous (gradient flow) or discrete (exact linearised GD)."},
    )
    depth: int = field(default=2, metadata={"help": "Hidden layers of the MLP."})
    width: int = field(default=512, metadata={"help": "Hidden width (finite ensemble only)."})
    activation: str = field(default="relu", metadata={"help": "relu, erf or identity."})
    weight_var: float = field(default=1.0, metadata={"help": "sigma_w^2 (eq. 4)."})
    bias_var: float = field(default=0.1, metadata={"help": "sigma_b^2 (eq. 4)."})
    standardize: bool = field(
        default=True, metadata={"help": "Standardise observations with dataset mean and std."}
    )
    scale_actions: bool = field(
        default=True, metadata={"help": "Scale bounded Box actions to [-1, 1]."}
    )
    ensemble: int = field(
        default=0, metadata={"help": "Also train this many finite networks (0: none)."}
    )
    max_transitions: int | None = field(
        default=None, metadata={"help": "Subsample at most this many transitions (seeded)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the subsample and the ensemble."})
    memory_limit_gib: float | None = field(
        default=None,
        metadata={"help": "Memory the kernels may use (GiB); None: 80% of available memory."},
    )

    def __post_init__(self):
        if not np.isfinite(self.gamma) or not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma!r}")
        if np.isnan(self.t) or self.t < 0:
            raise ValueError(f"t must be >= 0 (inf allowed), got {self.t!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        SoftTarget(self.target_tau)
        if self.time == "discrete" and self.target_tau > 1:
            raise ValueError(
                f"target_tau must lie in [0, 1] with time='discrete' (a fraction per step, "
                f"eq. 12), got {self.target_tau}"
            )
        if self.learning_rate is not None and (
            not np.isfinite(self.learning_rate) or self.learning_rate <= 0
        ):
            raise ValueError(f"learning_rate must be finite and > 0, got {self.learning_rate!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.time not in TIMES:
            raise ValueError(f"time must be one of {TIMES}, got {self.time!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
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

    def mlp(self) -> MLP:
        return MLP(self.depth, self.width, self.activation, self.weight_var, self.bias_var)

    def target(self) -> SoftTarget | None:
        """The target network of the estimator (None: residual gradient)."""
        return SoftTarget(self.target_tau) if self.estimator == "td" else None


@dataclass(frozen=True)
class ValueEstimate:
    """Per-state values of the evaluated policy.

    Attributes:
        states: (m, o) observations (raw, flattened as in the data).
        value_mean: (m,) TD-NTK ensemble mean of V at time t.
        value_std: (m,) its standard deviation.
        ensemble_mean: (m,) mean over the finite networks, or None.
        ensemble_std: (m,) std over the finite networks (ddof=1), or None.
        summary: settings, data description, learning rates, memory, timings.
        observation_space: the (unflattened) observation space, or None; names
            the state columns of `write_evaluation`.
    """

    states: np.ndarray
    value_mean: np.ndarray
    value_std: np.ndarray
    ensemble_mean: np.ndarray | None
    ensemble_std: np.ndarray | None
    summary: dict
    observation_space: object | None = None


# ---------------------------------------------------------------------- memory
def machine_memory() -> tuple[int, int]:
    """(available, total) bytes: /proc/meminfo's MemAvailable and MemTotal, else os.sysconf."""
    try:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                info[key] = int(value.split()[0]) * 1024
        return info["MemAvailable"], info["MemTotal"]
    except (OSError, KeyError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
        try:
            available = page * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError):
            available = total
        return available, total


def _per_transition_squared(k: int, target: bool) -> float:
    """Float64 words per n^2 (see `memory_estimate`)."""
    kernels = 2.0 * (1 + k) ** 2  # NNGP and NTK over [X; X'']
    blocks = 10.0  # Theta_bar, eigenbasis, Kbar, reduced blocks, eigh workspace
    if target:
        blocks += 60.0  # Van Loan exponential of a 3n x 3n matrix and the cached (E_t, W_t)
    return kernels + blocks


def memory_estimate(n: int, k: int, m_chunk: int, target: bool) -> int:
    """Bytes the dense closed form needs at peak for n transitions with k next inputs each.

    ``8 * (2 (n + n k)^2 + c n^2 + 3 m_chunk (n + n k) + 2 m_chunk^2)``: the NNGP
    and NTK kernels over the n + n k training inputs, c ~ 10 (single network) or
    ~ 70 (target network: the 3n x 3n Van Loan exponential) n x n work arrays,
    and the test-train kernel blocks of one chunk of m_chunk test inputs.
    """
    n_inputs = n * (1 + k)
    words = _per_transition_squared(k, target) * n * n
    words += 3.0 * m_chunk * n_inputs + 2.0 * m_chunk**2
    return int(8 * words)


def _largest_fitting(limit: float, k: int, m_chunk: int, target: bool) -> int:
    """The largest n with ``memory_estimate(n, k, m_chunk, target) <= limit`` (>= 1)."""
    a = 8.0 * _per_transition_squared(k, target)
    b = 8.0 * 3.0 * m_chunk * (1 + k)
    c = 8.0 * 2.0 * m_chunk**2 - limit
    n = int((-b + np.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a))
    while n > 1 and memory_estimate(n, k, m_chunk, target) > limit:
        n -= 1
    return max(n, 1)


def _check_memory(n: int, k: int, m_chunk: int, target: bool, limit_gib: float | None) -> dict:
    available, total = machine_memory()
    limit = limit_gib * GIB if limit_gib is not None else 0.8 * available
    need = memory_estimate(n, k, m_chunk, target)
    info = {"estimate_bytes": need, "limit_bytes": int(limit), "available_bytes": available,
            "total_bytes": total}  # fmt: skip
    if need > limit:
        fit = _largest_fitting(limit, k, m_chunk, target)
        raise MemoryLimitError(
            f"evaluate: the dense kernels for n={n} transitions with k={k} next input(s) each "
            f"({n * (1 + k)} kernel inputs) need about {need / GIB:.2f} GiB, above the limit of "
            f"{limit / GIB:.2f} GiB (this machine: {available / GIB:.2f} GiB available of "
            f"{total / GIB:.2f} GiB). Subsample with --max-transitions {fit} "
            "(max_transitions=..., chosen reproducibly with --seed), or raise --memory-limit "
            "if more memory is free."
        )
    return info


# ---------------------------------------------------------------------- kernels
class _CachedKernels:
    """``net.kernels`` remembering its last results, so the model rebuilt at the critical
    learning rate reuses the kernels of the probe model (same inputs, same values)."""

    def __init__(self, net: MLP):
        self.net = net
        self._cache: dict = {}

    def __call__(self, x1, x2):
        key = (_digest(x1), _digest(x2))
        if key not in self._cache:
            self._cache = {key: self.net.kernels(x1, x2)}
        return self._cache[key]

    def kernel_diagonals(self, x):
        return self.net.kernel_diagonals(x)

    def clear(self) -> None:
        self._cache = {}


def _digest(x) -> tuple:
    x = np.ascontiguousarray(x, dtype=np.float64)
    return x.shape, hash(x.tobytes())


def _safe_learning_rate(net: MLP, data: Transitions, target: bool, loss: str) -> float:
    """A rate at or below eq. 11's critical rate, from kernel diagonals alone.

    ``l_max(Theta_bar) <= 2 (tr Theta_XX + tr Theta_X''X'')`` because ``||G P|| <= 1``
    (each column of P has one entry <= 1, rows sum to 1, g <= 1), so
    ``2 / (l_max + l_min) >= 1 / (2 (tr_X + tr_X''))``; with a target network
    the driving kernel is Theta_XX and the bound ``1 / tr_X`` is looser still.
    """
    tr_x = float(np.sum(net.kernel_diagonals(data.x)[1]))
    tr_next = 0.0 if target else float(np.sum(net.kernel_diagonals(data.x_next_flat)[1]))
    eta = 1.0 / (4.0 * (tr_x + tr_next))
    return eta * (data.n if loss == "mean" else 1.0)


def _build_model(cfg: EvaluateConfig, transitions: Transitions) -> tuple[TDNTK, float]:
    """The TDNTK at cfg.learning_rate, or at `DEFAULT_RATE_FRACTION` of the critical rate
    (eq. 11) when it is None."""
    net = cfg.mlp()
    target = cfg.target()
    kernels = _CachedKernels(net)
    if cfg.learning_rate is not None:
        model = TDNTK(kernels, transitions, cfg.learning_rate, target, cfg.time, cfg.loss)
        return model, cfg.learning_rate
    probe_rate = _safe_learning_rate(net, transitions, target is not None, cfg.loss)
    probe = TDNTK(kernels, transitions, probe_rate, target, cfg.time, cfg.loss)
    rate = DEFAULT_RATE_FRACTION * probe.critical_learning_rate
    if not np.isfinite(cfg.t) and cfg.time == "continuous":
        return probe, rate  # the converged ensemble does not depend on eta
    del probe
    model = TDNTK(kernels, transitions, rate, target, cfg.time, cfg.loss)
    return model, rate


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
    data: OfflineData, transitions: Transitions, features, policy, action_space, states
):
    """(states (m, o), x (m, k, d), weights (m, k), source description).

    From the data, a state repeated with the same inputs and weights (tabular
    data revisits states) is evaluated once (`_distinct`).
    """
    if states is not None:
        states = np.asarray(states, dtype=np.float64)
        if states.ndim != 2 or states.shape[1] != data.obs_dim:
            raise ValueError(
                f"states must have shape (m, {data.obs_dim}) like the data's observations, "
                f"got {states.shape}"
            )
        if not np.all(np.isfinite(states)):
            raise ValueError("states contain NaN or infinite values")
        if has_discrete_leaf(data.observation_space):
            try:
                components(data.observation_space, states)
            except ValueError as err:
                raise ValueError(f"states: {err}") from None
        if policy is None:
            raise ValueError(
                "states: evaluating given states needs a policy (the behaviour policy's "
                "actions are only known at the data's next observations)"
            )
        x, w = next_inputs(states, features, policy=policy, action_space=action_space)
        return states, x, w, "given states"
    if policy is not None:
        x, w = next_inputs(data.observations, features, policy=policy, action_space=action_space)
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
) -> ValueEstimate:
    """Value mean and std per state for `policy` (or the behaviour policy) from `data`.

    Args:
        data: the transitions.
        config: `EvaluateConfig` (defaults: the TD estimator at t = inf, gamma 0.99,
            2-layer ReLU NTK, standardised observations; a finite t runs at half
            the critical learning rate unless one is given).
        policy: ``policy(obs) -> action`` (optionally with ``action_probs``), or a
            ``"PKG.MODULE:FUNC"`` string; None evaluates the behaviour policy
            from the recorded next actions / next-action probabilities.
        states: (m, o) states to evaluate (needs a policy); default: the data's
            observations (with a policy) or its non-terminal next observations.
        progress: progress bar for the finite ensemble.
    Returns:
        `ValueEstimate`.
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
    n_total = data.n
    if cfg.max_transitions is not None:
        data = data.subsample(cfg.max_transitions, cfg.seed)
    obs_space, action_space = infer_spaces(data)
    features = Features.from_spaces(
        obs_space, action_space, standardize=data if cfg.standardize else None,
        scale_actions=cfg.scale_actions,
    )  # fmt: skip
    transitions = to_transitions(data, features, cfg.gamma, policy, action_space)
    states, x_test, weights, source = _test_states(
        data, transitions, features, policy, action_space, states
    )
    weights = np.ones(x_test.shape[:2]) if weights is None else weights
    k_test = x_test.shape[1]
    chunk = max(1, 2048 // k_test)
    memory = _check_memory(
        transitions.n, transitions.k, min(chunk, len(states)) * k_test,
        cfg.target() is not None and np.isfinite(cfg.t), cfg.memory_limit_gib,
    )  # fmt: skip
    timings["data_and_features"] = time.perf_counter() - clock

    clock = time.perf_counter()
    model, rate = _build_model(cfg, transitions)
    timings["kernels_and_factorisation"] = time.perf_counter() - clock
    clock = time.perf_counter()
    mean, std = state_values(model, x_test, weights, cfg.t, chunk)
    timings["predict"] = time.perf_counter() - clock

    ens_mean = ens_std = None
    ensemble_info = None
    if cfg.ensemble:
        clock = time.perf_counter()
        ens_mean, ens_std, ensemble_info = _finite_ensemble(
            cfg, transitions, rate, x_test, weights, progress
        )
        timings["ensemble"] = time.perf_counter() - clock
    timings["total"] = time.perf_counter() - start

    summary = {
        "settings": asdict(cfg),
        "policy": policy_name,
        "data": {
            "transitions_total": n_total,
            "transitions_used": data.n,
            "episodes": data.num_episodes,
            "terminated": int(data.terminated.sum()),
            "truncated": int(data.truncated.sum()),
            "observation_dim": data.obs_dim,
            "observation_space": str(obs_space),
            "action_space": str(action_space),
            "input_dim": transitions.input_dim,
            "next_inputs_per_transition": transitions.k,
        },
        "states": {"count": int(len(states)), "source": source},
        "estimator": {
            "name": cfg.estimator,
            "description": ESTIMATOR_NAMES[cfg.estimator],
            "target_tau": cfg.target_tau if cfg.estimator == "td" else None,
            "converges": bool(model.dynamics.converges),
            "growth": float(model.dynamics.growth),
        },
        "learning_rate": rate,
        "learning_rate_source": (
            "given"
            if cfg.learning_rate is not None
            else f"{DEFAULT_RATE_FRACTION:g} x critical (eq. 11)"
        ),
        "critical_learning_rate": model.critical_learning_rate,
        "max_stable_learning_rate": model.dynamics.max_stable_learning_rate,
        "memory": memory,
        "timings_s": timings,
        "values": {
            "mean_of_means": float(np.mean(mean)),
            "mean_std": float(np.mean(std)),
            "min": float(np.min(mean)),
            "max": float(np.max(mean)),
        },
        "ensemble": ensemble_info,
    }
    return ValueEstimate(states, mean, std, ens_mean, ens_std, summary, obs_space)


def _policy_label(policy, data: OfflineData) -> str:
    if policy is None:
        if data.next_action_probs is not None:
            return "behaviour (recorded next-action probabilities)"
        return "behaviour (recorded next actions)"
    kind = "stochastic" if is_stochastic(policy) else "deterministic"
    name = getattr(policy, "__qualname__", type(policy).__qualname__)
    return f"{getattr(policy, '__module__', '?')}:{name} ({kind})"


def _finite_ensemble(cfg, transitions, rate, x_test, weights, progress):
    """E finite networks trained by TD gradient descent (`tdntk.training.train_ensemble`)."""
    from ..training import train_ensemble

    m, k, d = x_test.shape
    steps = int(cfg.t)
    result = train_ensemble(
        cfg.mlp(), transitions, rate, steps, cfg.ensemble, x_test.reshape(-1, d),
        target=cfg.target(),
        seed=cfg.seed, loss=cfg.loss, progress=progress, record_steps=[steps],
    )  # fmt: skip
    q = np.asarray(result.q[-1], dtype=np.float64).reshape(cfg.ensemble, m, k)
    values = np.einsum("emk,mk->em", q, weights)
    ddof = 1 if cfg.ensemble > 1 else 0
    info = {
        "members": cfg.ensemble,
        "width": cfg.width,
        "steps": steps,
        "learning_rate": rate,
        "final_loss_mean": float(np.mean(result.loss[-1])),
        "diverged_members": int(np.sum(~np.isfinite(values).all(axis=1))),
        "wall_time_s": float(result.wall_time),
    }
    return values.mean(axis=0), values.std(axis=0, ddof=ddof), info


# ---------------------------------------------------------------------- outputs
def write_evaluation(result: ValueEstimate, out, plot_coordinate: int = 0) -> Path:
    """Write values.csv, values.png and summary.json into the folder `out` (staged: a
    failure leaves `out` as it was).

    values.csv: ``state``, then for a space with Discrete/MultiDiscrete/MultiBinary
    parts the unflattened components (``state_index`` for a Discrete space;
    `spaces.component_names`), then ``obs_0 .. obs_{o-1}`` (the flat observation),
    the values. `plot_coordinate` indexes the readable columns (`spaces.readable_names`:
    the components, or ``obs_j`` for Box-only spaces).
    """
    o = result.states.shape[1]
    names, readable = readable_columns(result.observation_space, result.states)
    if not 0 <= int(plot_coordinate) < len(names):
        raise ValueError(
            f"plot_coordinate must lie in [0, {len(names)}) (one of {_preview(names)}), "
            f"got {plot_coordinate}"
        )
    columns: dict[str, np.ndarray] = {"state": np.arange(len(result.states))}
    if has_discrete_leaf(result.observation_space):
        columns.update({name: _integral(readable[:, j]) for j, name in enumerate(names)})
    for j in range(o):
        columns[f"obs_{j}"] = result.states[:, j]
    columns["value_mean"] = result.value_mean
    columns["value_std"] = result.value_std
    if result.ensemble_mean is not None:
        columns["ensemble_mean"] = result.ensemble_mean
        columns["ensemble_std"] = result.ensemble_std
    j = int(plot_coordinate)
    png = _plot(result, readable[:, j], names[j])
    summary = dict(result.summary, plot_coordinate=j, plot_x=names[j])
    with io.staged_output_dir(out) as tmp:
        io.write_csv(tmp / "values.csv", columns)
        io.atomic_write_bytes(tmp / "values.png", png)
        io.write_json(tmp / "summary.json", summary)
    return Path(out)


def _integral(column: np.ndarray) -> np.ndarray:
    """(m,) as int64 when every value is a whole number (state indices read as 3, not 3.0)."""
    whole = np.all(column == np.round(column)) and np.all(np.abs(column) < 2**53)
    return column.astype(np.int64) if whole else column


def _preview(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:3])}, ..., {names[-1]}"


def _plot(result: ValueEstimate, x: np.ndarray, label: str) -> bytes:
    """Predicted values +- 2 std against x (m,) (the state column `label`), as PNG bytes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    t = result.summary["settings"]["t"]
    ax.errorbar(
        x, result.value_mean, yerr=2 * result.value_std, fmt="o", ms=3, alpha=0.6,
        elinewidth=0.8, label=f"TD-NTK ensemble mean $\\pm$ 2 std (t = {t:g})",
    )  # fmt: skip
    if result.ensemble_mean is not None:
        members = result.summary["ensemble"]["members"]
        ax.errorbar(
            x, result.ensemble_mean, yerr=2 * result.ensemble_std, fmt="s", ms=3, alpha=0.6,
            elinewidth=0.8, label=f"{members} finite networks: mean $\\pm$ 2 std",
        )  # fmt: skip
    ax.set_xlabel(label)
    ax.set_ylabel("V(s)")
    ax.set_title(f"Policy: {result.summary['policy']}", fontsize=9)
    ax.legend(fontsize=8)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()
