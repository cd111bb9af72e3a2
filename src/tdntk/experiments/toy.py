"""The toy chain experiment: the paper's figures 1-4, 6 and 7 (sec. 5.1, app. D.1).

``tdntk toy --preset quick --out runs/toy`` runs, top to bottom:

1. the data: one `ToyChainEnv` step from each of 21 states in [0, 1.25]
   (gamma = 1), and the true values by rolling the environment forward;
2. the closed form (eq. 10, `TDNTK` with the MLP's analytic kernels) at every
   recorded time and at t = inf;
3. an ensemble of networks trained by full-batch TD gradient descent
   (`train_ensemble`), and "Lin. (MC)": the linearisations (eq. 8) of many
   finite-width initialisations (`linearised_ensemble`); member i of both
   starts from the same parameters (``fold_in(PRNGKey(seed), i)``);
4. fig. 1: member 0 against its own linearisation (parameters and outputs);
5. fig. 7: the primary + soft-target case for each tau at t = target_steps;
6. the width sweep: ensembles (and Lin. (MC)) at several widths against the
   width-independent analytic prediction;

then `tdntk.report.toy.write_report` saves the figures, the numbers behind
them, report.md and stages.json (time per stage) in ``--out``. Each part is a
stage (`tdntk.experiments.stages`): its result is saved under
``<out>/checkpoints/stages`` and its trainings checkpoint under
``<out>/checkpoints/train`` (every ``checkpoint_every_s`` seconds and at
recorded steps), so rerunning the same command resumes where it stopped and
gives the same numbers as an uninterrupted run (`tdntk.files.OutputFolder`
for what ``--out`` may hold).

Shapes: n transitions, m evaluation states, R recorded steps, E members.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from ..data import Transitions
from ..dynamics import Schedule, SoftTarget
from ..empirical import linearised_ensemble, linearised_q, parameter_trajectory
from ..envs.toy import dataset_states, toy_transitions, true_values
from ..nets import MLP
from ..predict import TDNTK
from ..training import init_ensemble, train_ensemble
from .command import Command, checkpoint_option, doc, overwrite_option, progress_option
from .stages import Stages, run_in_stages

__all__ = [
    "ToyConfig",
    "PRESETS",
    "EvalGrid",
    "Linearisation",
    "TargetRun",
    "WidthRun",
    "ToyResults",
    "run",
    "simulate",
    "load_results",
    "COMMAND",
]


@dataclass(frozen=True)
class ToyConfig:
    """Settings of the toy experiment (defaults: the paper's, app. D.1)."""

    out: str = field(default="runs/toy", metadata=doc("Output folder (report.md and figures)."))
    net: MLP = field(
        default=MLP(depth=2, width=1024), metadata=doc("The network (eq. 3-4): its fields.")
    )
    learning_rate: float = field(default=0.01, metadata=doc("eta, summed TD loss (eq. 6)."))
    gamma: float = field(default=1.0, metadata=doc("Discount."))
    n_states: int = field(default=21, metadata=doc("Dataset states linspace(0, 1.25, n)."))
    steps: int = field(default=2**16, metadata=doc("Gradient steps of the main ensemble."))
    members: int = field(default=50, metadata=doc("Trained networks in the main ensemble."))
    mc_inits: int = field(default=500, metadata=doc("Initialisations for Lin. (MC)."))
    taus: tuple[float, ...] = field(
        default=(0.01, 0.1, 1.0), metadata=doc("Soft-update rates for fig. 7 (repeatable).")
    )
    target_steps: int = field(default=2048, metadata=doc("Training steps for fig. 7."))
    target_members: int = field(default=50, metadata=doc("Networks per tau in fig. 7."))
    widths: tuple[int, ...] = field(
        default=(64, 256, 1024, 4096), metadata=doc("Width sweep (repeatable).")
    )
    width_steps: int = field(
        default=2**12,
        metadata=doc(
            "Training steps in the width sweep (ours, not the paper's; the networks' gap to "
            "their linearisation has saturated by ~2^10 steps)."
        ),
    )
    width_members: int = field(default=20, metadata=doc("Networks per width."))
    width_mc_inits: int = field(default=100, metadata=doc("Lin. (MC) inits per width (0: none)."))
    n_eval: int = field(default=100, metadata=doc("Evaluation states per range."))
    ood_low: float = field(default=-0.5, metadata=doc("Lowest state of fig. 3."))
    ood_high: float = field(default=2.5, metadata=doc("Highest state of fig. 3."))
    time: Literal["continuous", "discrete"] = field(
        default="continuous",
        metadata=doc("Closed form in 'continuous' time (the paper) or exact 'discrete' GD."),
    )
    seed: int = field(default=0, metadata=doc("Member i starts from fold_in(PRNGKey(seed), i)."))
    dtype: Literal["float32", "float64"] = field(
        default="float32", metadata=doc("float32 or float64 networks.")
    )
    overwrite: bool = overwrite_option()
    checkpoint_every_s: float = checkpoint_option()
    progress: bool = progress_option()

    def __post_init__(self):
        for name in ("n_states", "steps", "target_steps", "width_steps", "n_eval"):
            _check_int(name, getattr(self, name), 1)
        for name in ("members", "target_members", "width_members"):
            _check_int(name, getattr(self, name), 2)
        _check_int("mc_inits", self.mc_inits, 2)
        _check_int("width_mc_inits", self.width_mc_inits, 0)
        if self.width_mc_inits == 1:
            raise ValueError("ToyConfig.width_mc_inits must be 0 (none) or >= 2, got 1")
        if not isinstance(self.net, MLP):
            raise ValueError(f"ToyConfig.net must be an MLP, got {self.net!r}")
        Schedule(self.learning_rate, time=self.time)
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"ToyConfig.dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if not (self.ood_low < 0.0 and self.ood_high > 1.25):
            raise ValueError(
                "ToyConfig: fig. 3 needs states outside the data range [0, 1.25]: "
                f"ood_low < 0 < 1.25 < ood_high, got [{self.ood_low}, {self.ood_high}]"
            )
        if self.width_steps > self.steps:
            raise ValueError(
                f"ToyConfig.width_steps must be <= steps={self.steps}, got {self.width_steps}"
            )
        if not self.taus or any(not 0.0 <= t <= 1.0 for t in self.taus):
            raise ValueError(f"ToyConfig.taus must be non-empty, each in [0, 1], got {self.taus}")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"ToyConfig.widths must be non-empty positive ints, got {self.widths}")
        if not self.checkpoint_every_s >= 0:
            raise ValueError(
                f"ToyConfig.checkpoint_every_s must be >= 0 seconds, got {self.checkpoint_every_s}"
            )

    @property
    def schedule(self) -> Schedule:
        """The residual-gradient schedule of the main ensemble and figures 1-4, 6."""
        return Schedule(self.learning_rate, time=self.time)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"ToyConfig.{name} must be an integer >= {minimum}, got {value!r}")


PRESETS = {
    "paper": ToyConfig(),
    "quick": ToyConfig(
        net=MLP(depth=2, width=256),
        steps=2**13,
        members=16,
        mc_inits=64,
        target_members=8,
        widths=(64, 128, 256, 512),
        width_steps=2**12,
        width_members=6,
        width_mc_inits=24,
    ),
    "tiny": ToyConfig(
        net=MLP(depth=2, width=16),
        steps=64,
        members=2,
        mc_inits=2,
        taus=(0.1, 1.0),
        target_steps=16,
        target_members=2,
        widths=(8, 16),
        width_steps=32,
        width_members=2,
        width_mc_inits=2,
        n_eval=12,
        progress=False,
    ),
}


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class EvalGrid:
    """Evaluation states, concatenated into one input array ``x`` (m, 1).

    Attributes:
        s_in: (m_in,) states in the data range [0, 1.25] (figs 2, 4, 6).
        s_out: (m_out,) states in [ood_low, ood_high] (fig. 3).
        s_probe: (2 n - 1,) the dataset states followed by the midpoints between them.
        probe_is_data: (2 n - 1,) True at the dataset states.
    """

    s_in: np.ndarray
    s_out: np.ndarray
    s_probe: np.ndarray
    probe_is_data: np.ndarray

    @classmethod
    def build(cls, states: np.ndarray, n_eval: int, ood_low: float, ood_high: float) -> EvalGrid:
        mids = 0.5 * (states[1:] + states[:-1])
        probe = np.concatenate([states, mids])
        is_data = np.arange(probe.size) < states.size
        s_in = np.linspace(states.min(), states.max(), n_eval)
        return cls(s_in, np.linspace(ood_low, ood_high, n_eval), probe, is_data)

    @property
    def x(self) -> np.ndarray:
        """(m, 1) all evaluation inputs: in, out, probe."""
        return np.concatenate([self.s_in, self.s_out, self.s_probe])[:, None]

    def split(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """{"in", "out", "probe"} views of `values` (..., m) along the last axis."""
        a, b = self.s_in.size, self.s_in.size + self.s_out.size
        return {"in": values[..., :a], "out": values[..., a:b], "probe": values[..., b:]}


@dataclass(frozen=True)
class Linearisation:
    """Fig. 1: one trained network against its own linearisation (eq. 8) over training.

    Attributes:
        steps: (R,) recorded steps.
        param_distance: (R,) ``||theta_t - theta_0|| / ||theta_0||``.
        param_rmse: (R,) RMS over parameters of ``(theta_t - theta_0) - omega_t``.
        function_rmse: (R,) RMS over the in-range states of ``Q_t^NN - Q_t^lin``.
        q_nn: (R, m) the trained network; q_lin: (R, m) its linearisation.
        wall_time: seconds (training + linearisation).
    """

    steps: np.ndarray
    param_distance: np.ndarray
    param_rmse: np.ndarray
    function_rmse: np.ndarray
    q_nn: np.ndarray
    q_lin: np.ndarray
    wall_time: float


@dataclass(frozen=True)
class TargetRun:
    """Fig. 7: primary + soft target (eq. 12-15) for one tau at t = target_steps.

    Attributes:
        mean, std: (m,) closed form; q_nn: (E, m) trained primary networks.
    """

    tau: float
    mean: np.ndarray
    std: np.ndarray
    q_nn: np.ndarray
    wall_time: float


@dataclass(frozen=True)
class WidthRun:
    """The width sweep at t = width_steps: q_nn (E, m) trained, q_mc (E_mc, m) or None."""

    width: int
    q_nn: np.ndarray
    q_mc: np.ndarray | None
    wall_time: float


@dataclass(frozen=True)
class ToyResults:
    """Everything behind the toy figures (shapes in the module docstring).

    Attributes:
        config: the settings.
        data: the 21 transitions.
        grid: the evaluation states.
        true: (m,) true values on ``grid.x``, from rollouts.
        steps: (R,) recorded steps of the main ensemble (0 ... config.steps).
        analytic_mean, analytic_std: (R, m) eq. 10 at `steps`.
        analytic_inf_mean, analytic_inf_std: (m,) eq. 10 at t = inf ("Lin.").
        q_nn: (R, E, m) the trained ensemble.
        mc_times: (T,) times of Lin. (MC); q_mc: (E_mc, T, m).
        fig1: `Linearisation` of member 0.
        targets: one `TargetRun` per tau.
        widths: one `WidthRun` per width.
        critical_learning_rate: eq. 11 for Theta_bar; max_stable_learning_rate: 2 / l_max.
        wall_times: seconds per part.
    """

    config: ToyConfig
    data: Transitions
    grid: EvalGrid
    true: np.ndarray
    steps: np.ndarray
    analytic_mean: np.ndarray
    analytic_std: np.ndarray
    analytic_inf_mean: np.ndarray
    analytic_inf_std: np.ndarray
    q_nn: np.ndarray
    mc_times: np.ndarray
    q_mc: np.ndarray
    fig1: Linearisation
    targets: tuple[TargetRun, ...]
    widths: tuple[WidthRun, ...]
    critical_learning_rate: float
    max_stable_learning_rate: float
    wall_times: dict


# ---------------------------------------------------------------------- pieces
def _log(message: str) -> None:
    print(f"[tdntk toy] {message}", flush=True)


def _record_steps(cfg: ToyConfig) -> np.ndarray:
    """Main ensemble records: 0, powers of two, the fig. 7 and width-sweep times, `steps`."""
    powers = [2**k for k in range(cfg.steps.bit_length()) if 2**k <= cfg.steps]
    extra = [t for t in (cfg.target_steps, cfg.width_steps) if t <= cfg.steps]
    return np.unique(np.array([0, *powers, *extra, cfg.steps], dtype=np.int64))


def _fig1_steps(steps: int) -> np.ndarray:
    """Fig. 1 records: 0 and a half-octave grid round(2^(k/2)) up to `steps`."""
    k_max = int(np.floor(2 * np.log2(steps)))
    grid = np.round(2.0 ** (np.arange(k_max + 1) / 2)).astype(np.int64)
    return np.unique(np.concatenate([[0], grid[grid <= steps], [steps]]))


# fields that do not change the results: not part of the settings that key --out
_RUN_CONTROL = ("out", "overwrite", "checkpoint_every_s", "progress")


def _settings(cfg: ToyConfig) -> dict:
    """The settings that determine the results (JSON-able)."""
    settings = dataclasses.asdict(cfg)
    for key in _RUN_CONTROL:
        settings.pop(key)
    return settings


def _checkpoint_dir(stages: Stages, part: str, cfg: ToyConfig, **extra) -> Path | None:
    """The checkpoint folder of stage `part`, keyed by the settings (None: no checkpoints)."""
    return stages.checkpoint_dir(part, _settings(cfg) | extra)


def _first(tree, index: int = 0):
    """Member `index` of parameters with a leading (E,) axis."""
    return jax.tree.map(lambda a: a[index], tree)


def _flat(tree) -> np.ndarray:
    """(P,) float64 parameters, ordered like ``jax.flatten_util.ravel_pytree`` (leaf order,
    each leaf raveled row-major)."""
    return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(tree)])


def _param_counts(depth: int, width: int, input_dim: int = 1) -> int:
    sizes = [input_dim] + [width] * depth + [1]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def _train(cfg, net, data, x, ckpt, target=None, **kwargs):
    return train_ensemble(
        net,
        data,
        Schedule(cfg.learning_rate, target),
        x_eval=x,
        seed=cfg.seed,
        dtype=jnp.dtype(cfg.dtype),
        checkpoint_dir=ckpt,
        resume=ckpt is not None,
        progress=cfg.progress,
        checkpoint_every_s=cfg.checkpoint_every_s,
        **kwargs,
    )


def projected_seconds(cfg: ToyConfig, data: Transitions, x: np.ndarray) -> dict[str, float]:
    """Projected network-training seconds per part, from timing a short chunk of the main
    ensemble: {"ensemble + fig. 1", "fig. 7", "width sweep"}.

    The per member-step cost at `cfg.net.width` is scaled by parameter count to the
    other widths (a rough guide: small widths are overhead-bound). Lin. (MC) and
    the closed form are not included.
    """
    net, chunk = cfg.net, 32
    common = dict(x_eval=x, seed=cfg.seed, dtype=jnp.dtype(cfg.dtype), progress=False)
    train_ensemble(net, data, cfg.schedule, 2, cfg.members, **common)  # compile
    timed = train_ensemble(
        net, data, cfg.schedule, chunk, cfg.members, record_steps=[chunk], **common
    )
    per_member_step = timed.wall_time / (chunk * cfg.members)
    p_main = _param_counts(cfg.net.depth, cfg.net.width)
    sweep = sum(
        cfg.width_steps * cfg.width_members * _param_counts(cfg.net.depth, w) / p_main
        for w in cfg.widths
        if w != cfg.net.width
    )
    return {
        "ensemble + fig. 1": per_member_step * cfg.steps * (cfg.members + 1),
        "fig. 7": per_member_step * len(cfg.taus) * cfg.target_steps * cfg.target_members,
        "width sweep": per_member_step * sweep,
    }


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def linearisation_vs_network(cfg: ToyConfig, data, grid: EvalGrid, stages) -> Linearisation:
    """Fig. 1: train member 0 alone (parameters recorded) and compare with eq. 8 for it."""
    start = time.perf_counter()
    steps = _fig1_steps(cfg.steps)
    res = _train(
        cfg,
        cfg.net,
        data,
        grid.x,
        _checkpoint_dir(stages, "fig1", cfg),
        steps=cfg.steps,
        members=1,
        record_steps=steps,
        record_params=True,
    )
    params0 = _first(res.params0)
    theta0 = _flat(params0)
    displacement = np.stack(
        [_flat(_first(_first(res.param_history, r))) - theta0 for r in range(steps.size)]
    )
    omega = np.asarray(parameter_trajectory(cfg.net, params0, data, steps, cfg.schedule))
    q_lin = np.asarray(linearised_q(cfg.net, params0, data, grid.x, steps, cfg.schedule))
    q_nn = res.q[:, 0, :]
    nn_in, lin_in = grid.split(q_nn)["in"], grid.split(q_lin)["in"]
    return Linearisation(
        steps=res.steps,
        param_distance=res.param_distance[:, 0],
        param_rmse=np.sqrt(np.mean((displacement - omega) ** 2, axis=1)),
        function_rmse=np.sqrt(np.mean((nn_in - lin_in) ** 2, axis=1)),
        q_nn=q_nn,
        q_lin=q_lin,
        wall_time=time.perf_counter() - start,
    )


def lin_mc(cfg: ToyConfig, net: MLP, data, x, inits: int, times) -> np.ndarray:
    """Lin. (MC): eq. 8 for `inits` finite-width initialisations: (E_mc, T, m)."""
    params = init_ensemble(net, data.input_dim, inits, cfg.seed, jnp.dtype(cfg.dtype))
    return np.asarray(
        linearised_ensemble(net, params, data, x, times, cfg.schedule, progress=cfg.progress)
    )


def target_run(cfg: ToyConfig, tau: float, data, grid: EvalGrid, stages) -> TargetRun:
    """Fig. 7 for one tau: closed form (eq. 15) and trained primary networks at target_steps."""
    start = time.perf_counter()
    target = SoftTarget(tau)
    schedule = Schedule(cfg.learning_rate, target, time=cfg.time)
    pred = TDNTK(cfg.net, data, schedule).predict(grid.x, cfg.target_steps, full_cov=False)
    res = _train(
        cfg,
        cfg.net,
        data,
        grid.x,
        _checkpoint_dir(stages, f"target_tau_{tau:g}", cfg, tau=tau),
        steps=cfg.target_steps,
        members=cfg.target_members,
        target=target,
        record_steps=[cfg.target_steps],
    )
    return TargetRun(tau, pred.mean[0], pred.std[0], res.q[-1], time.perf_counter() - start)


def width_run(cfg: ToyConfig, width: int, data, grid: EvalGrid, stages) -> WidthRun:
    """The ensemble (and Lin. (MC)) of one width at t = width_steps."""
    start = time.perf_counter()
    net = dataclasses.replace(cfg.net, width=width)
    res = _train(
        cfg,
        net,
        data,
        grid.x,
        _checkpoint_dir(stages, f"width_{width}", cfg, sweep_width=width),
        steps=cfg.width_steps,
        members=cfg.width_members,
        record_steps=[cfg.width_steps],
    )
    q_mc = None
    if cfg.width_mc_inits:
        q_mc = lin_mc(cfg, net, data, grid.x, cfg.width_mc_inits, [cfg.width_steps])[:, 0]
    return WidthRun(width, res.q[-1], q_mc, time.perf_counter() - start)


# ---------------------------------------------------------------------- the experiment
def _analytic(cfg: ToyConfig, data, x, steps) -> dict:
    """eq. 10 at the recorded steps and t = inf: mean, std (R + 1, m) and the rates."""
    model = TDNTK(cfg.net, data, cfg.schedule)
    pred = model.predict(x, np.append(steps.astype(np.float64), np.inf), full_cov=False)
    return {
        "mean": pred.mean,
        "std": pred.std,
        "critical_learning_rate": model.critical_learning_rate,
        "max_stable_learning_rate": model.max_stable_learning_rate,
    }


def _main_ensemble(cfg: ToyConfig, data, x, steps, stages: Stages) -> dict:
    """The main ensemble's records: steps (R,), q (R, E, m)."""
    ckpt = _checkpoint_dir(stages, "ensemble", cfg)
    res = _train(cfg, cfg.net, data, x, ckpt, steps=cfg.steps, members=cfg.members,
                 record_steps=steps)  # fmt: skip
    return {"steps": res.steps, "q": res.q}


def _log_projection(projected: dict) -> None:
    parts = ", ".join(f"{k} {_duration(v)}" for k, v in projected.items())
    _log(
        f"projected network training time: {_duration(sum(projected.values()))} on "
        f"{jax.default_backend()} ({len(jax.devices())} device(s)): {parts}; "
        "Lin. (MC) and the closed form come on top"
    )


def _width_runs(cfg, data, grid, stages, main: dict, mc_times, q_mc) -> list[WidthRun]:
    """The width sweep; the main width reuses the main ensemble and Lin. (MC)."""
    widths = []
    for width in cfg.widths:
        if width == cfg.net.width:
            r = int(np.flatnonzero(main["steps"] == cfg.width_steps)[0])
            t_mc = int(np.flatnonzero(mc_times == cfg.width_steps)[0])
            mc = q_mc[: cfg.width_mc_inits, t_mc] if cfg.width_mc_inits else None
            widths.append(WidthRun(width, main["q"][r, : cfg.width_members], mc, 0.0))
            continue
        widths.append(stages.run(
            f"width_{width}", lambda w=width: width_run(cfg, w, data, grid, stages),
            f"width sweep: width {width}, {cfg.width_steps} steps",
        ))  # fmt: skip
    return widths


def simulate(cfg: ToyConfig, stages: Stages | None = None) -> ToyResults:
    """Run every part of the experiment (module docstring) and return the numbers.

    `stages` saves each part's result and loads those an earlier run finished
    (None: compute everything, save nothing).
    """
    stages = Stages(None, _log) if stages is None else stages
    states = dataset_states(cfg.n_states)
    data = toy_transitions(states, cfg.gamma)
    grid = EvalGrid.build(states, cfg.n_eval, cfg.ood_low, cfg.ood_high)
    x = grid.x
    truth = true_values(x[:, 0], cfg.gamma)

    projected = stages.run(
        "projection", lambda: projected_seconds(cfg, data, x),
        f"timing a short training chunk (width {cfg.net.width}, {cfg.members} members)",
    )  # fmt: skip
    _log_projection(projected)
    steps = _record_steps(cfg)
    analytic = stages.run(
        "analytic", lambda: _analytic(cfg, data, x, steps), "closed form (eq. 10)"
    )
    _log(
        f"critical learning rate (eq. 11) {analytic['critical_learning_rate']:.4g}, "
        f"eta = {cfg.learning_rate:g}"
    )
    main = stages.run(
        "ensemble", lambda: _main_ensemble(cfg, data, x, steps, stages),
        f"training {cfg.members} networks for {cfg.steps} steps",
    )  # fmt: skip
    fig1 = stages.run(
        "fig1", lambda: linearisation_vs_network(cfg, data, grid, stages),
        "fig. 1: one network against its linearisation",
    )  # fmt: skip
    mc_times = np.array(sorted({float(cfg.width_steps), float(cfg.steps)}) + [np.inf])
    q_mc = stages.run(
        "lin_mc", lambda: lin_mc(cfg, cfg.net, data, x, cfg.mc_inits, mc_times),
        f"Lin. (MC): {cfg.mc_inits} linearised initialisations",
    )  # fmt: skip
    targets = [
        stages.run(
            f"target_tau_{tau:g}", lambda tau=tau: target_run(cfg, tau, data, grid, stages),
            f"fig. 7: target network tau = {tau:g}, {cfg.target_steps} steps",
        )
        for tau in cfg.taus
    ]  # fmt: skip
    widths = _width_runs(cfg, data, grid, stages, main, mc_times, q_mc)

    wall = {name: stages.seconds(name) for name in stages.times}  # compute seconds per part
    wall["fig1"] = fig1.wall_time
    wall |= {f"target_tau_{t.tau:g}": t.wall_time for t in targets}
    wall |= {f"width_{w.width}": w.wall_time for w in widths}
    wall["total"] = float(sum(wall.values()))
    return ToyResults(
        config=cfg,
        data=data,
        grid=grid,
        true=truth,
        steps=main["steps"],
        analytic_mean=analytic["mean"][:-1],
        analytic_std=analytic["std"][:-1],
        analytic_inf_mean=analytic["mean"][-1],
        analytic_inf_std=analytic["std"][-1],
        q_nn=main["q"],
        mc_times=mc_times,
        q_mc=q_mc,
        fig1=fig1,
        targets=tuple(targets),
        widths=tuple(widths),
        critical_learning_rate=analytic["critical_learning_rate"],
        max_stable_learning_rate=analytic["max_stable_learning_rate"],
        wall_times=wall,
    )


def load_results(out) -> ToyResults:
    """Rebuild the `ToyResults` of a finished run from its ``summary.json`` and ``results.npz``
    (e.g. to redraw the report with ``tdntk.report.toy.write_report`` without retraining)."""
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    hints = {f.name: f.type for f in dataclasses.fields(ToyConfig)}
    settings = {  # settings of older versions (resume, keep_checkpoints) are dropped
        k: tuple(v) if "tuple" in str(hints[k]) else v
        for k, v in summary["settings"].items()
        if k in hints
    }
    cfg = ToyConfig(**(settings | {"net": MLP(**settings["net"])}))
    with np.load(out / "results.npz") as f:
        a = {k: f[k] for k in f.files}
    data = Transitions(a["data_x"], a["data_reward"], a["data_x_next"], a["data_discount"])
    grid = EvalGrid.build(dataset_states(cfg.n_states), cfg.n_eval, cfg.ood_low, cfg.ood_high)
    fig1 = Linearisation(
        **{f.name: a[f"fig1_{f.name}"] for f in dataclasses.fields(Linearisation) if
           f.name != "wall_time"},
        wall_time=summary["wall_time_seconds"]["fig1"],
    )  # fmt: skip
    wall = summary["wall_time_seconds"]
    targets = tuple(
        TargetRun(tau, *(a[f"target_{tau:g}_{k}"] for k in ("mean", "std", "q_nn")),
                  wall[f"target_tau_{tau:g}"])
        for tau in cfg.taus
    )  # fmt: skip
    widths = tuple(
        WidthRun(w, a[f"width_{w}_q_nn"], a.get(f"width_{w}_q_mc"), wall[f"width_{w}"])
        for w in cfg.widths
    )
    return ToyResults(
        config=cfg,
        data=data,
        grid=grid,
        true=a["true_value"],
        steps=a["steps"],
        analytic_mean=a["analytic_mean"],
        analytic_std=a["analytic_std"],
        analytic_inf_mean=a["analytic_inf_mean"],
        analytic_inf_std=a["analytic_inf_std"],
        q_nn=a["q_nn"],
        mc_times=a["mc_times"],
        q_mc=a["q_mc"],
        fig1=fig1,
        targets=targets,
        widths=widths,
        critical_learning_rate=summary["critical_learning_rate"],
        max_stable_learning_rate=summary["max_stable_learning_rate"],
        wall_times=wall,
    )


def run(cfg: ToyConfig) -> ToyResults:
    """Run the experiment in ``cfg.out`` (resuming an earlier run of the same settings),
    write the report there and print where it is and the time per stage."""
    from ..report.toy import write_report  # matplotlib: imported only when a run reports

    return run_in_stages(cfg.out, "toy", _settings(cfg), cfg.overwrite, _log,
                         lambda stages: simulate(cfg, stages), write_report)  # fmt: skip


COMMAND = Command(
    config=ToyConfig,
    run=run,
    presets=PRESETS,
    default_preset="quick",
    help=(
        "The toy chain (paper section 5.1, appendix D.1): closed form vs trained ensembles, "
        "figures 1-4, 6, 7 and a width sweep, with report.md in --out. "
        "'--preset quick' takes minutes on a CPU; '--preset paper' uses the paper's "
        "settings (hours on a CPU; prints a projected time first). Rerunning the same "
        "command resumes an interrupted run; --out must be new, empty or an earlier result."
    ),
)
