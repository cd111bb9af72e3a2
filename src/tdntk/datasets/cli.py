"""`tdntk collect` and `tdntk evaluate`: bring your own environment, data and policy.

Bad inputs (a missing array, NaN rewards, mismatched lengths, an unknown
environment, a policy that cannot be imported, kernels too large for memory)
become one-line click errors, never tracebacks, and leave no partial output.
"""

from __future__ import annotations

import math
from pathlib import Path

import click
import numpy as np

__all__ = ["collect_command", "evaluate_command"]

# Errors that describe bad input; anything else is a bug and keeps its traceback.
_INPUT_ERRORS = (ValueError, OSError, ImportError)


def _fail(err: Exception) -> click.ClickException:
    return click.ClickException(str(err))


@click.command("collect")
@click.option(
    "--env",
    "env_id",
    required=True,
    help="Gymnasium environment id, e.g. CartPole-v1 (or module:EnvId to import its package).",
)
@click.option(
    "--policy",
    default=None,
    help="PKG.MODULE:FUNC or path/file.py:FUNC, policy(obs) -> action (default: uniform random).",
)
@click.option("--transitions", default=1000, show_default=True, help="Transitions to collect.")
@click.option("--seed", default=0, show_default=True, help="Seed of resets and actions.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output .npz file (format: docs/datasets.md).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def collect_command(env_id, policy, transitions, seed, out, progress):
    """Collect transitions of a policy in any Gymnasium environment into a .npz dataset."""
    from .collect import collect
    from .offline import save_npz
    from .policies import load_policy

    if transitions < 1:
        raise click.BadParameter(f"must be >= 1, got {transitions}", param_hint="--transitions")
    if out.suffix != ".npz":
        raise click.BadParameter(f"must end in .npz, got {out}", param_hint="--out")
    try:
        pol = None if policy is None else load_policy(policy)
        data = collect(env_id, pol, transitions, seed=seed, progress=progress)
        save_npz(out, data)
    except _INPUT_ERRORS as err:
        raise _fail(err) from None
    click.echo(
        f"wrote {out}: {data.n} transitions, {data.num_episodes} episodes "
        f"({int(data.terminated.sum())} terminated, {int(data.truncated.sum())} truncated), "
        f"policy {policy or 'uniform random'}"
    )


def _time(value: str) -> float:
    try:
        t = float(value)
    except ValueError:
        raise click.BadParameter(
            f"expected a number or inf, got {value!r}", param_hint="--t"
        ) from None
    if math.isnan(t) or t < 0:
        raise click.BadParameter(f"must be >= 0 (or inf), got {value!r}", param_hint="--t")
    return t


@click.command("evaluate")
@click.option(
    "--data",
    "data_path",
    default=None,
    type=click.Path(path_type=Path),
    help="Dataset .npz (docs/datasets.md).",
)
@click.option(
    "--minari",
    "minari_id",
    default=None,
    help="Instead of --data: a Minari dataset id or folder stored locally (never downloaded).",
)
@click.option(
    "--policy",
    default=None,
    help="Target policy PKG.MODULE:FUNC or path/file.py:FUNC; default: the behaviour policy "
    "from the recorded next actions (SARSA-style).",
)
@click.option("--gamma", default=0.99, show_default=True, help="Discount factor.")
@click.option(
    "--estimator",
    default="td",
    show_default=True,
    type=click.Choice(["td", "residual-gradient"]),
    help="td: TD with a soft target network (the fixed point of policy evaluation); "
    "residual-gradient: a single Q-network, gradients through both terms (paper sec. 4.1; "
    "biased when an input has several observed next states).",
)
@click.option(
    "--target-tau",
    default=1.0,
    show_default=True,
    type=float,
    help="td only: the target's soft-update rate tau (eq. 12); in [0, 1] with --time discrete.",
)
@click.option(
    "--t",
    "t",
    default="inf",
    show_default=True,
    help="Training time in gradient steps, or inf for the converged ensemble.",
)
@click.option(
    "--states",
    "states_path",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="States to evaluate: a .npz with an (m, obs_dim) array 'observations', flattened like "
    "the data's (needs --policy).",
)
@click.option(
    "--ensemble",
    default=0,
    show_default=True,
    help="Also train N finite networks (of --width) for --t steps and report them side by side.",
)
@click.option("--depth", default=2, show_default=True, help="Hidden layers.")
@click.option("--width", default=512, show_default=True, help="Hidden width (finite ensemble).")
@click.option(
    "--activation",
    default="relu",
    show_default=True,
    type=click.Choice(["relu", "erf", "identity"]),
)
@click.option("--weight-var", default=1.0, show_default=True, help="sigma_w^2 (eq. 4).")
@click.option("--bias-var", default=0.1, show_default=True, help="sigma_b^2 (eq. 4).")
@click.option(
    "--learning-rate",
    default=None,
    type=float,
    help="eta; default: half the critical learning rate of eq. 11 for the dataset.",
)
@click.option("--loss", default="sum", show_default=True, type=click.Choice(["sum", "mean"]))
@click.option(
    "--time",
    "time_mode",
    default="continuous",
    show_default=True,
    type=click.Choice(["continuous", "discrete"]),
    help="Gradient flow, or exact gradient descent of the linearised network.",
)
@click.option(
    "--standardize/--no-standardize",
    default=True,
    show_default=True,
    help="Standardise observations with the dataset's mean and std.",
)
@click.option(
    "--max-transitions",
    default=None,
    type=int,
    help="Use at most N transitions, subsampled reproducibly with --seed.",
)
@click.option(
    "--memory-limit",
    default=None,
    type=float,
    help="GiB the kernels may use (default: 80% of the available memory).",
)
@click.option(
    "--plot-coordinate",
    default=0,
    show_default=True,
    help="State column on the plot's x axis: obs_j (Box observations), or the j-th "
    "unflattened component (state_index for a Discrete space; docs/datasets.md).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of subsampling and ensemble.")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (values.csv, values.png, summary.json).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def evaluate_command(
    data_path,
    minari_id,
    policy,
    gamma,
    estimator,
    target_tau,
    t,
    states_path,
    ensemble,
    depth,
    width,
    activation,
    weight_var,
    bias_var,
    learning_rate,
    loss,
    time_mode,
    standardize,
    max_transitions,
    memory_limit,
    plot_coordinate,
    seed,
    out,
    progress,
):
    """Value estimates with uncertainty for a policy from offline data (TD-NTK)."""
    from .evaluate import EvaluateConfig, MemoryLimitError, evaluate, write_evaluation
    from .minari_io import load_minari
    from .offline import load_npz
    from .policies import load_policy

    if (data_path is None) == (minari_id is None):
        raise click.UsageError("give exactly one of --data FILE.npz or --minari DATASET")
    t_value = _time(t)
    try:
        cfg = EvaluateConfig(
            gamma=gamma, t=t_value, estimator=estimator, target_tau=target_tau,
            learning_rate=learning_rate,
            loss=loss, time=time_mode, depth=depth, width=width, activation=activation,
            weight_var=weight_var, bias_var=bias_var, standardize=standardize,
            ensemble=ensemble, max_transitions=max_transitions, seed=seed,
            memory_limit_gib=memory_limit,
        )  # fmt: skip
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    try:
        pol = None if policy is None else load_policy(policy)
        if data_path is not None:
            data = load_npz(data_path)
        else:
            data = load_minari(minari_id)
        states = None if states_path is None else _load_states(states_path)
        _check_plot_coordinate(plot_coordinate, data)
        result = evaluate(data, cfg, pol, states, progress=progress)
        if policy is not None:
            result.summary["policy"] = policy
        result.summary["data_source"] = str(data_path or f"minari:{minari_id}")
        write_evaluation(result, out, plot_coordinate)
    except (*_INPUT_ERRORS, MemoryLimitError) as err:
        raise _fail(err) from None
    s = result.summary
    click.echo(
        f"wrote {out}: {s['states']['count']} states, {s['data']['transitions_used']} "
        f"transitions; estimator {s['estimator']['name']}; critical learning rate "
        f"{s['critical_learning_rate']:.4g}, learning rate {s['learning_rate']:.4g}, "
        f"{s['timings_s']['total']:.2f} s"
    )
    if not s["estimator"]["converges"]:
        click.echo(
            f"warning: the {s['estimator']['name']} dynamics diverge on this data "
            f"(growth {s['estimator']['growth']:.3g}); values at t = inf are NaN",
            err=True,
        )
    if s["ensemble"] and s["ensemble"]["diverged_members"]:
        click.echo(
            f"warning: {s['ensemble']['diverged_members']} of {s['ensemble']['members']} finite "
            "networks diverged (NaN/inf); lower --learning-rate",
            err=True,
        )


def _check_plot_coordinate(plot_coordinate: int, data) -> None:
    """--plot-coordinate indexes the readable state columns (`spaces.readable_names`)."""
    from .spaces import readable_names

    names = readable_names(data.observation_space, data.obs_dim)
    if not 0 <= plot_coordinate < len(names):
        shown = ", ".join(names) if len(names) <= 6 else f"{names[0]}, ..., {names[-1]}"
        space = "" if data.observation_space is None else f" of {data.observation_space}"
        raise click.BadParameter(
            f"must lie in [0, {len(names)}) for the state columns {shown}{space}, "
            f"got {plot_coordinate}",
            param_hint="--plot-coordinate",
        )


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
