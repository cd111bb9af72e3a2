"""Ensembles of finite Q-networks trained by full-batch TD gradient descent.

E members of one `MLP` (NTK parametrisation), each from its own
initialisation, are trained together on the TD loss of the closed form
(same `loss` reduction and learning-rate convention as `TDNTK`):

* single network (paper eq. 6): ``L = 1/2 ||Q(X) - r - G P Q(X'')||^2``,
  gradients through both Q(X) and Q(X'');
* primary + target (eq. 14): the bootstrap term uses the target parameters and
  carries no gradient; after every step the target moves by eq. 12,
  ``theta_bar <- (1 - tau) theta_bar + tau theta``, and with
  ``hard_update_every=N`` it is also overwritten by the primary every N steps
  (DQN style; use tau = 0 for a pure hard update).

``loss="mean"`` divides L by n.  One gradient step is
``theta <- theta - learning_rate * grad L``, so step k is the closed form at
``t = k`` with ``time="discrete"`` for the linearised network.

Members run batched inside compiled code: ``member_map="vmap"`` (one batched
step for all members) or ``"map"`` (`lax.map`: members one after the other
inside the compiled call, each running its chunk of steps; faster on CPU,
where batched matmuls lose efficiency); ``"auto"`` picks "map" on CPU and
"vmap" elsewhere (see ``benchmarks/bench_training.py``).  Steps run in compiled
loops between record points (the trip count is a runtime argument, so one
compilation serves every chunk, and how steps are split into calls does not
change the arithmetic).  Members shard over all JAX devices with
`jax.shard_map` (padded to a multiple of the device count).

With a ``checkpoint_dir`` the state and records are written atomically at
every record point and every ``checkpoint_every_s`` seconds of wall time
(between two compiled calls, so mid-chunk), and Ctrl-C (SIGINT) stops after
the current call with a checkpoint; ``resume=True`` continues from it to the
same numbers, bit for bit, as an uninterrupted run.

Shapes: n transitions, k next inputs per transition, d features, m evaluation
inputs, E members, R record points.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .data import Transitions
from .dynamics import (
    DivergenceWarning,
    LearningRateWarning,
    Schedule,
    stability,
)
from .files import save_npz
from .nets import MLP
from .reduced import reduce_transitions
from .solvers.dense import spectrum_from_ntk

__all__ = [
    "CHECKPOINT_EVERY_S",
    "EnsembleResult",
    "MEMBER_MAPS",
    "default_record_steps",
    "init_ensemble",
    "resolve_member_map",
    "train_ensemble",
]

MEMBER_MAPS = ("auto", "vmap", "map")
CHECKPOINT_NAME = "checkpoint.npz"
CHECKPOINT_EVERY_S = 120.0
"""Default seconds of wall time between checkpoints (besides those at record points)."""
# Wall time one compiled call should take, so that the progress bar moves and an
# interruption loses little; results do not depend on how steps are split.
_SECONDS_PER_CALL = 1.0
# Above this many kernel inputs n (1 + k), train_ensemble skips the learning-rate
# check (analytic NTK on the inputs + one n x n eigh: ~3 s at 4096 on a 2-core CPU).
_RATE_CHECK_MAX_INPUTS = 4096


@dataclass(frozen=True)
class EnsembleResult:
    """Records of one ensemble training run.

    Attributes:
        steps: (R,) recorded steps, starting at 0; the last is the number of steps.
        q: (R, E, m) Q on x_eval for every member at every recorded step.
        loss: (R, E) TD loss on the data (same reduction as training).
        param_distance: (R, E) ``||theta_t - theta_0|| / ||theta_0||`` (paper fig. 1).
        param_rms: (R, E) ``sqrt(mean((theta_t - theta_0)^2))`` over all parameters.
        params0: initial parameters (MLP layout), every leaf with a leading (E,) axis.
        params: final parameters, same layout.
        param_history: leaves (R, E, ...) when ``record_params=True``, else None.
        wall_time: seconds of training (summed over resumed parts).
        member_map: "vmap" or "map", how members were batched.
        devices: number of devices the members were sharded over.
    """

    steps: np.ndarray
    q: np.ndarray
    loss: np.ndarray
    param_distance: np.ndarray
    param_rms: np.ndarray
    params0: list
    params: list
    param_history: list | None
    wall_time: float
    member_map: str = "vmap"
    devices: int = 1


@dataclass(frozen=True)
class _Spec:
    """Static settings of the compiled step (hashable: keys the compiled-function cache)."""

    net: MLP
    learning_rate: float
    loss_scale: float
    tau: float | None  # None: single network
    hard_update_every: int | None
    member_map: str


# ---------------------------------------------------------------------- inputs
def default_record_steps(steps: int) -> np.ndarray:
    """0, every power of two up to `steps`, and `steps`: (R,) int64."""
    powers = [2**i for i in range(max(int(steps), 1).bit_length()) if 2**i <= steps]
    return np.unique(np.array([0, *powers, steps], dtype=np.int64))


def _check_record_steps(record_steps, steps: int) -> np.ndarray:
    if record_steps is None:
        return default_record_steps(steps)
    arr = np.atleast_1d(np.asarray(record_steps))
    arr = arr.astype(np.int64) if arr.size == 0 else arr
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"record_steps must be a 1-D sequence of integers, got {record_steps!r}")
    if np.any(arr < 0) or np.any(arr > steps):
        raise ValueError(f"record_steps must lie in [0, steps={steps}], got {arr.tolist()}")
    return np.unique(np.concatenate([[0], arr, [steps]]).astype(np.int64))


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def resolve_member_map(member_map: str) -> str:
    """ "auto" -> "map" on CPU (sequential members keep matmuls efficient), else "vmap"."""
    if member_map not in MEMBER_MAPS:
        raise ValueError(f"member_map must be one of {MEMBER_MAPS}, got {member_map!r}")
    if member_map == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return member_map


def _dtype_scope(dtype):
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return jax.enable_x64(True) if dtype == jnp.float64 else contextlib.nullcontext()


def _batch(data: Transitions, dtype, has_target: bool) -> dict:
    """Device arrays of the data: x, x_next (n k, d), reward (n,), gw = G P weights (n, k)."""
    batch = {
        "x": data.x,
        "x_next": data.x_next_flat,
        "reward": data.reward,
        "gw": data.discount[:, None] * data.next_weights,
    }
    if not has_target:  # one forward pass over [X; X''] for the single network
        batch["x_all"] = np.concatenate([data.x, data.x_next_flat])
    return {k: jnp.asarray(v, dtype) for k, v in batch.items()}


# ---------------------------------------------------------------------- the TD step
def td_loss(net: MLP, params, target_params, batch: dict, loss_scale: float):
    """TD loss of one member: ``loss_scale / 2 * ||Q(X) - r - G P Q'(X'')||^2`` (eq. 6 / 14).

    ``target_params=None``: single network, Q' = Q (gradients through both terms);
    otherwise Q' uses the target parameters.
    """
    n = batch["x"].shape[0]
    if target_params is None:
        q_all = net.apply(params, batch["x_all"])
        q, q_next = q_all[:n], q_all[n:]
    else:
        q = net.apply(params, batch["x"])
        q_next = jax.lax.stop_gradient(net.apply(target_params, batch["x_next"]))
    bootstrap = jnp.sum(batch["gw"] * q_next.reshape(batch["gw"].shape), axis=1)
    residual = q - batch["reward"] - bootstrap
    return 0.5 * loss_scale * jnp.sum(residual**2)


def _record_member(spec: _Spec, params, target, params0, batch, x_eval):
    """Q(x_eval) (m,), TD loss, relative parameter distance and RMS of one member."""
    loss = td_loss(spec.net, params, target if spec.tau is not None else None, batch,
                   spec.loss_scale)  # fmt: skip
    diff = jax.tree.leaves(jax.tree.map(jnp.subtract, params, params0))
    sq = sum(jnp.sum(d**2) for d in diff)
    norm0 = sum(jnp.sum(p**2) for p in jax.tree.leaves(params0))
    count = sum(d.size for d in diff)
    return spec.net.apply(params, x_eval), loss, jnp.sqrt(sq / norm0), jnp.sqrt(sq / count)


def _run_member(spec: _Spec, state, params0, batch, x_eval, start, n_steps, with_records):
    """`n_steps` TD gradient steps of one member from global step `start`, then its records.

    state: (params, target) with target = () for a single network.
    Returns (state, (q (m,), loss, distance, rms)); the records are zeros unless
    `with_records` (an unbatched boolean, so the branch costs nothing when off).
    """

    def step(i, carry):
        params, target = carry
        grads = jax.grad(td_loss, argnums=1)(
            spec.net, params, target if spec.tau is not None else None, batch, spec.loss_scale
        )
        params = jax.tree.map(lambda p, g: p - spec.learning_rate * g, params, grads)
        if spec.tau is not None:  # eq. 12, then the optional hard copy
            tau = spec.tau
            target = jax.tree.map(lambda tb, p: (1 - tau) * tb + tau * p, target, params)
            if spec.hard_update_every is not None:
                copy = (start + i + 1) % spec.hard_update_every == 0
                target = jax.tree.map(lambda tb, p: jnp.where(copy, p, tb), target, params)
        return params, target

    state = jax.lax.fori_loop(0, n_steps, step, state)
    record = functools.partial(_record_member, spec, *state, params0, batch, x_eval)
    skip = lambda: jax.tree.map(jnp.zeros_like, jax.eval_shape(record))  # noqa: E731
    return state, jax.lax.cond(with_records, record, skip)


def _members(spec: _Spec, state, params0, batch, x_eval, start, n_steps, with_records):
    """`_run_member` for every member: batched by vmap, or one after the other by lax.map."""
    args = (batch, x_eval, start, n_steps, with_records)
    if spec.member_map == "vmap":
        run = jax.vmap(_run_member, in_axes=(None, 0, 0, None, None, None, None, None))
        return run(spec, state, params0, *args)
    return jax.lax.map(lambda a: _run_member(spec, a[0], a[1], *args), (state, params0))


@functools.lru_cache(maxsize=32)
def _compiled(spec: _Spec, devices: tuple):
    """The jitted chunk (state, params0, batch, x_eval, start, n, with_records) -> (state, records).

    Members shard over `devices` (shard_map) when there are several.
    """
    chunk = functools.partial(_members, spec)
    if len(devices) > 1:
        mesh = Mesh(np.array(devices), ("members",))
        chunk = jax.shard_map(
            chunk,
            mesh=mesh,
            in_specs=(P("members"), P("members"), P(), P(), P(), P(), P()),
            out_specs=P("members"),
            check_vma=False,
        )
    return jax.jit(chunk)


@functools.lru_cache(maxsize=32)
def _init_fn(net: MLP, input_dim: int, dtype):
    return jax.jit(jax.vmap(lambda k: net.init(k, input_dim, dtype)))


# ---------------------------------------------------------------------- public API
def init_ensemble(net: MLP, input_dim: int, members: int, seed: int = 0, dtype=jnp.float32):
    """Initial parameters of E members, every leaf with a leading (E,) axis.

    Member i is ``net.init(jax.random.fold_in(jax.random.PRNGKey(seed), i), input_dim, dtype)``,
    so any member can be reproduced alone and linearisations can share the initialisations.
    """
    members = _check_int("members", members, 1)
    input_dim = _check_int("input_dim", input_dim, 1)
    with _dtype_scope(dtype):
        key = jax.random.PRNGKey(seed)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(members))
        return _init_fn(net, input_dim, jnp.dtype(dtype))(keys)


def _check_params0(net, params0, input_dim, members, dtype):
    expected = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), input_dim, dtype))
    want = jax.tree.map(lambda s: (members, *s.shape), expected)
    try:
        got = jax.tree.map(lambda a: tuple(np.shape(a)), params0)
        same = jax.tree.structure(got) == jax.tree.structure(want) and got == want
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ValueError(
            f"params0 must have the layout of net.init with a leading members axis {want}, "
            f"got {jax.tree.map(lambda a: np.shape(a), params0)}"
        )
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), params0)


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def train_ensemble(
    net: MLP,
    data: Transitions,
    schedule: Schedule,
    steps: int,
    members: int,
    x_eval,
    seed: int = 0,
    hard_update_every: int | None = None,
    record_steps=None,
    record_params: bool = False,
    dtype=jnp.float32,
    checkpoint_dir=None,
    resume: bool = False,
    progress: bool = True,
    params0=None,
    member_map: str = "auto",
    checkpoint_every_s: float = CHECKPOINT_EVERY_S,
) -> EnsembleResult:
    """Train E members by full-batch TD gradient descent and record them (module docstring).

    Args:
        net: the architecture.
        data: the transitions (discounts and next-input weights included).
        schedule: learning rate, target (None: a single network, eq. 6;
            `SoftTarget(tau)` with tau <= 1: eq. 12-14) and loss, the closed
            form's conventions; training is discrete gradient descent whatever
            ``schedule.time`` (step k is the closed form at t = k with
            ``time="discrete"``).
        steps: number of gradient steps (>= 0).
        members: E (>= 1).
        x_eval: (m, d) inputs at which Q is recorded.
        seed: member i starts from ``fold_in(PRNGKey(seed), i)`` (see `init_ensemble`).
        hard_update_every: with a target, copy primary -> target every N steps.
        record_steps: steps at which to record; 0 and `steps` are always added.
            Default `default_record_steps(steps)`.
        record_params: also keep the parameters at every record point.
        dtype: float32 (default) or float64 (run in a local ``jax.enable_x64`` scope).
        checkpoint_dir: if given, the state and records are written there
            atomically (``checkpoint.npz``) at every record point and every
            `checkpoint_every_s` seconds; Ctrl-C then saves one before stopping.
        resume: continue from the checkpoint in `checkpoint_dir` (if there is
            one); the settings must match, and the numbers equal an uninterrupted run.
        progress: show a tqdm bar with steps/s.
        params0: initial parameters (leaves with a leading (E,) axis) instead of `seed`.
        member_map: "auto", "vmap" or "map" (module docstring).
        checkpoint_every_s: seconds of wall time between checkpoints (>= 0; 0: after
            every compiled call, inf: only at record points).
    Returns:
        `EnsembleResult`.
    Raises:
        KeyboardInterrupt: on Ctrl-C, after the checkpoint (with a `checkpoint_dir`).
    Warns:
        LearningRateWarning: when the learning rate exceeds the critical rate (eq. 11)
            of the analytic NTK on `data`.
        DivergenceWarning: when the linearised discrete dynamics diverge (TD with a
            target network can at any rate). Both are checked up to
            `_RATE_CHECK_MAX_INPUTS` kernel inputs (1,024 transitions
            for 0 < tau < 1, whose check is a (2n, 2n) eigenproblem).
    """
    steps, members, x_eval, hard_update_every = _check_arguments(
        net, data, schedule, steps, members, x_eval, hard_update_every, resume, checkpoint_dir
    )
    if not checkpoint_every_s >= 0:
        raise ValueError(
            f"checkpoint_every_s must be >= 0 (inf allowed), got {checkpoint_every_s!r}"
        )
    record_steps = _check_record_steps(record_steps, steps)
    _warn_learning_rate(net, data, schedule)
    target = schedule.target
    spec = _Spec(
        net=net,
        learning_rate=float(schedule.learning_rate),
        loss_scale=1.0 / data.n if schedule.loss == "mean" else 1.0,
        tau=None if target is None else float(target.tau),
        hard_update_every=hard_update_every,
        member_map=resolve_member_map(member_map),
    )
    with _dtype_scope(dtype):
        dtype = jnp.dtype(dtype)
        if params0 is None:
            params0 = init_ensemble(net, data.input_dim, members, seed, dtype)
        else:
            params0 = _check_params0(net, params0, data.input_dim, members, dtype)
        settings = dict(
            steps=steps, members=members, seed=int(seed), loss=schedule.loss,
            record_steps=record_steps.tolist(), record_params=bool(record_params),
            dtype=str(dtype),
        )  # fmt: skip
        fingerprint = _fingerprint(spec, settings, data, x_eval, params0)
        saving = _Saving(checkpoint_dir, fingerprint, float(checkpoint_every_s), resume)
        return _train(
            spec, data, steps, members, x_eval, record_steps, record_params, dtype,
            saving, progress, params0,
        )  # fmt: skip


def _check_arguments(
    net, data, schedule, steps, members, x_eval, hard_update_every, resume, checkpoint_dir
):
    """Validate `train_ensemble`'s arguments: (steps, members, x_eval (m, d), hard_update_every)."""
    if not isinstance(net, MLP):
        raise TypeError(f"net must be an MLP, got {type(net).__name__}")
    if not isinstance(data, Transitions):
        raise TypeError(f"data must be a Transitions, got {type(data).__name__}")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {schedule!r}")
    steps = _check_int("steps", steps, 0)
    members = _check_int("members", members, 1)
    x_eval = np.asarray(x_eval, dtype=np.float64)
    if x_eval.ndim != 2 or x_eval.shape[1] != data.input_dim:
        raise ValueError(f"x_eval must have shape (m, {data.input_dim}), got {x_eval.shape}")
    target = schedule.target
    if target is not None and target.tau > 1:
        raise ValueError(
            f"SoftTarget.tau must be <= 1 for discrete updates (eq. 12), got {target.tau}"
        )
    if hard_update_every is not None:
        if target is None:
            raise ValueError("hard_update_every needs a target network (target=SoftTarget(tau))")
        hard_update_every = _check_int("hard_update_every", hard_update_every, 1)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    return steps, members, x_eval, hard_update_every


def _fingerprint(spec: _Spec, settings: dict, data: Transitions, x_eval, params0) -> str:
    """JSON of every setting and digests of the inputs: a checkpoint is resumed only
    by a run whose fingerprint is equal."""
    return json.dumps(
        {
            "net": asdict(spec.net),
            "learning_rate": spec.learning_rate,
            "tau": spec.tau,
            "hard_update_every": spec.hard_update_every,
            **settings,
            "data": _digest(data.x, data.reward, data.x_next, data.discount, data.next_weights),
            "x_eval": _digest(x_eval),
            "params0": _digest(*jax.tree.leaves(params0)),
        },
        sort_keys=True,
    )


def _warn_learning_rate(net: MLP, data: Transitions, schedule: Schedule) -> None:
    """Warn when the closed form for the analytic NTK of `net` on `data` says so.

    Discrete time, as trained: `LearningRateWarning` above the critical rate
    (eq. 11) or ``2 / l_max``, and `DivergenceWarning` when the linearised
    dynamics diverge (TD with a target network can at any rate). Wide networks'
    empirical NTKs are close to the analytic one, so their gradient descent
    behaves alike. Skipped for more than `_RATE_CHECK_MAX_INPUTS` kernel inputs.
    """
    n, target = data.n, schedule.target
    partial_target = target is not None and 0 < target.tau < 1  # a (2n, 2n) eigenproblem
    if n * (1 + data.k) > _RATE_CHECK_MAX_INPUTS or (partial_target and 2 * n > 2048):
        return
    reduced = reduce_transitions(data, td=target is not None)
    spectrum = spectrum_from_ntk(net.device_kernels(reduced.inputs)[1], reduced)
    st = stability(spectrum, dataclasses.replace(schedule, time="discrete"))
    lr, where = schedule.learning_rate, "(analytic NTK of `net` on `data`)"
    if lr > st.critical_learning_rate:
        warnings.warn(
            f"train_ensemble: learning_rate={lr:g} exceeds the critical rate "
            f"{st.critical_learning_rate:.4g} of eq. 11 (2 / l_max = "
            f"{st.max_stable_learning_rate:.4g}) {where}; lower it if the members diverge",
            LearningRateWarning,
            stacklevel=3,
        )
    if not st.converges:
        warnings.warn(
            f"train_ensemble: {st.cause} {where}; the trained members are expected to diverge too",
            DivergenceWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------- the loop
@dataclass
class _Records:
    steps: list
    q: list
    loss: list
    distance: list
    rms: list
    history: list | None

    def arrays(self) -> dict:
        out = {
            "rec_steps": np.array(self.steps, np.int64),
            "rec_q": np.array(self.q),
            "rec_loss": np.array(self.loss),
            "rec_distance": np.array(self.distance),
            "rec_rms": np.array(self.rms),
        }
        if self.history is not None:
            for i, leaf in enumerate(_stack_history(self.history)):
                out[f"hist_{i}"] = leaf
        return out


def _stack_history(history: list) -> list:
    """list over records of leaf lists -> list over leaves of (R, E, ...) arrays."""
    return [np.stack(leaves) for leaves in zip(*history, strict=True)]


def _pad(tree, size):
    """Pad the leading (E,) axis to `size` with copies of member 0 (E % devices == 0)."""
    return jax.tree.map(
        lambda a: (
            jnp.concatenate([a, jnp.repeat(a[:1], size - a.shape[0], axis=0)])
            if size > a.shape[0]
            else a
        ),
        tree,
    )


def _to_numpy(tree, members):
    return jax.tree.map(lambda a: np.asarray(a)[:members], tree)


@dataclass
class _Saving:
    """Where and when `_train` checkpoints: ``checkpoint_dir/checkpoint.npz`` (None: never)."""

    checkpoint_dir: object
    fingerprint: str
    every_s: float
    resume: bool

    @property
    def path(self) -> Path | None:
        return None if self.checkpoint_dir is None else Path(self.checkpoint_dir) / CHECKPOINT_NAME


class _DeferredInterrupt:
    """While active (main thread, Python's default SIGINT handler), a first Ctrl-C only sets
    `requested`: training stops after the current compiled call, with a checkpoint. A
    second Ctrl-C interrupts at once."""

    def __init__(self, active: bool):
        self.requested = False
        self._previous = None
        self._active = active

    def __enter__(self):
        if (
            self._active
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)
        print(
            "\n[tdntk] Ctrl-C: saving a checkpoint after the current chunk of steps "
            "(Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _train(
    spec, data, steps, members, x_eval, record_steps, record_params, dtype,
    saving: _Saving, progress, params0,
):  # fmt: skip
    from tqdm.auto import tqdm

    devices = tuple(jax.devices())
    padded = -(-members // len(devices)) * len(devices)
    chunk_fn = _compiled(spec, devices)
    has_target = spec.tau is not None
    batch = _batch(data, dtype, has_target)
    x_eval_dev = jnp.asarray(x_eval, dtype)
    treedef = jax.tree.structure(params0)

    params0 = _pad(params0, padded)
    params, tgt = params0, (params0 if has_target else ())
    records = _Records([], [], [], [], [], [] if record_params else None)
    step, wall_before = 0, 0.0
    ckpt = saving.path
    if saving.resume and ckpt.exists():
        step, params, tgt, records, wall_before = _load_checkpoint(
            ckpt, saving.fingerprint, treedef, has_target, record_params, padded, dtype
        )

    if len(devices) > 1:
        sharding = NamedSharding(Mesh(np.array(devices), ("members",)), P("members"))
        params0, params, tgt = jax.device_put((params0, params, tgt), sharding)

    def record(at, rec):
        records.steps.append(at)
        for name, value in zip(("q", "loss", "distance", "rms"), rec, strict=True):
            getattr(records, name).append(np.asarray(value)[:members])
        if records.history is not None:
            records.history.append([np.asarray(a)[:members] for a in jax.tree.leaves(params)])

    start_time = saved_at = time.perf_counter()
    bar = tqdm(total=steps, initial=step, unit="step", disable=not progress, desc="TD training")
    rate = None  # steps per second, measured
    try:
        with _DeferredInterrupt(ckpt is not None) as interrupt:
            for at in record_steps:
                if at < step or (at == step and step in records.steps):
                    continue
                while True:  # at least one call: n = 0 only evaluates the records
                    # the first call compiles: keep it short; then aim at _SECONDS_PER_CALL
                    n = 8 if rate is None else int(rate * _SECONDS_PER_CALL)
                    n = int(np.clip(n, 1, at - step)) if at > step else 0
                    tick = time.perf_counter()
                    last = step + n == at
                    (params, tgt), rec = chunk_fn(
                        (params, tgt), params0, batch, x_eval_dev, jnp.int32(step),
                        jnp.int32(n), jnp.bool_(last),
                    )  # fmt: skip
                    jax.block_until_ready(params)
                    rate = max(n, 1) / max(time.perf_counter() - tick, 1e-9)
                    step += n
                    bar.update(n)
                    if last:
                        record(int(at), rec)
                    now = time.perf_counter()
                    due = last or interrupt.requested or now - saved_at >= saving.every_s
                    if ckpt is not None and due:
                        _write_checkpoint(
                            ckpt, saving.fingerprint, step, params, tgt, records, members,
                            wall_before + now - start_time,
                        )  # fmt: skip
                        saved_at = time.perf_counter()
                    if interrupt.requested:
                        raise KeyboardInterrupt(
                            f"train_ensemble: stopped at step {step} of {steps}; checkpoint "
                            f"saved in {ckpt} (resume=True continues from it)"
                        )
                    if last:
                        break
            if interrupt.requested:  # Ctrl-C after the last checkpoint: the run is complete
                raise KeyboardInterrupt(f"train_ensemble: finished; checkpoint saved in {ckpt}")
    finally:
        bar.close()
    wall = wall_before + time.perf_counter() - start_time
    history = None
    if records.history is not None:
        history = jax.tree.unflatten(treedef, _stack_history(records.history))
    return EnsembleResult(
        steps=np.array(records.steps, np.int64),
        q=np.array(records.q),
        loss=np.array(records.loss),
        param_distance=np.array(records.distance),
        param_rms=np.array(records.rms),
        params0=_to_numpy(params0, members),
        params=_to_numpy(params, members),
        param_history=history,
        wall_time=wall,
        member_map=spec.member_map,
        devices=len(devices),
    )


# ---------------------------------------------------------------------- checkpoints
def _write_checkpoint(path, fingerprint, step, params, tgt, records, members, wall):
    """Write the state and the records so far atomically (tdntk.files.save_npz).

    The initial parameters are not saved: a resumed run rebuilds them, and the
    fingerprint holds their digest.
    """
    arrays = {
        "fingerprint": np.array(fingerprint),
        "step": np.array(step, np.int64),
        "wall_time": np.array(wall),
    }
    for name, tree in (("params", params), ("target", tgt)):
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f"{name}_{i}"] = np.asarray(leaf)[:members]
    arrays.update(records.arrays())
    save_npz(path, **arrays)


def _load_checkpoint(path, fingerprint, treedef, has_target, record_params, padded, dtype):
    with np.load(path, allow_pickle=False) as f:
        saved = json.loads(str(f["fingerprint"]))
        wanted = json.loads(fingerprint)
        if saved != wanted:
            diff = sorted(k for k in wanted if saved.get(k) != wanted[k])
            raise ValueError(
                f"resume: the checkpoint {path} was written with different settings "
                f"({', '.join(diff)}); use another checkpoint_dir or resume=False"
            )
        n_leaves = treedef.num_leaves

        def tree(name):
            leaves = [jnp.asarray(f[f"{name}_{i}"], dtype) for i in range(n_leaves)]
            return _pad(jax.tree.unflatten(treedef, leaves), padded)

        params = tree("params")
        tgt = tree("target") if has_target else ()
        history = None
        if record_params:
            stacked = [f[f"hist_{i}"] for i in range(n_leaves)]
            history = [[leaf[r] for leaf in stacked] for r in range(stacked[0].shape[0])]
        records = _Records(
            steps=[int(s) for s in f["rec_steps"]],
            q=list(f["rec_q"]),
            loss=list(f["rec_loss"]),
            distance=list(f["rec_distance"]),
            rms=list(f["rec_rms"]),
            history=history,
        )
        return int(f["step"]), params, tgt, records, float(f["wall_time"])
