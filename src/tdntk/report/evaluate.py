"""The outputs of `tdntk evaluate`: values.csv, values.png and summary.json.

Written from a `ValueEstimate` (`tdntk.experiments.evaluate`) into a staged
folder (`tdntk.files.staged_output_dir`), so a failure leaves nothing partial.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..datasets.spaces import has_discrete_leaf, readable_columns
from ..files import atomic_write_bytes, staged_output_dir, write_csv, write_json
from .plotting import figure_bytes, new_figure

__all__ = ["write_evaluation"]


def write_evaluation(result, out, plot_coordinate: int = 0) -> Path:
    """Write values.csv, values.png and summary.json of a `ValueEstimate` into the folder
    `out` (staged: a failure leaves `out` as it was).

    values.csv: ``state``, then for a space with Discrete/MultiDiscrete/MultiBinary
    parts the unflattened components (``state_index`` for a Discrete space;
    `spaces.component_names`), then ``obs_0 .. obs_{o-1}`` (the flat observation),
    the values: ``value_mean``, ``value_std`` (the ensemble's), ``value_sampling_std``
    (jackknife over episodes), ``value_total_std``, ``value_lo_95`` / ``value_hi_95``
    and ``feasible`` (1 inside the feasible range of the rewards, 0 outside) when the
    result has them. `plot_coordinate` indexes the readable columns (`spaces.readable_names`:
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
    sampling = getattr(result, "sampling_std", None)
    if sampling is not None:
        columns["value_sampling_std"] = sampling
        columns["value_total_std"] = np.sqrt(result.value_std**2 + sampling**2)
        columns["value_lo_95"] = result.lower
        columns["value_hi_95"] = result.upper
        columns["feasible"] = result.feasible.astype(np.int64)
    if result.ensemble_mean is not None:
        columns["ensemble_mean"] = result.ensemble_mean
        columns["ensemble_std"] = result.ensemble_std
    j = int(plot_coordinate)
    png = _plot(result, readable[:, j], names[j])
    summary = dict(result.summary, plot_coordinate=j, plot_x=names[j])
    with staged_output_dir(out) as tmp:
        write_csv(tmp / "values.csv", columns)
        atomic_write_bytes(tmp / "values.png", png)
        write_json(tmp / "summary.json", summary)
    return Path(out)


def _integral(column: np.ndarray) -> np.ndarray:
    """(m,) as int64 when every value is a whole number (state indices read as 3, not 3.0)."""
    whole = np.all(column == np.round(column)) and np.all(np.abs(column) < 2**53)
    return column.astype(np.int64) if whole else column


def _preview(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:3])}, ..., {names[-1]}"


def _plot(result, x: np.ndarray, label: str) -> bytes:
    """Predicted values with their 95 % intervals (and +- 2 ensemble std) against x (m,)
    (the state column `label`), the policy value J as a band; PNG bytes."""
    fig, (ax,) = new_figure(size=(7, 4.5))
    t = result.summary["settings"]["t"]
    if getattr(result, "lower", None) is not None:
        below, above = result.value_mean - result.lower, result.upper - result.value_mean
        ax.errorbar(
            x, result.value_mean, yerr=np.vstack([below, above]), fmt="none", ecolor="0.6",
            elinewidth=0.8, alpha=0.7, label="95 % interval (ensemble + jackknife over episodes)",
        )  # fmt: skip
    ax.errorbar(
        x, result.value_mean, yerr=2 * result.value_std, fmt="o", ms=3, alpha=0.6,
        elinewidth=0.8, label=f"TD-NTK ensemble mean $\\pm$ 2 std (t = {t:g})",
    )  # fmt: skip
    value = result.summary.get("policy_value")
    if value is not None and np.all(np.isfinite(value["interval_95"])):
        lo, hi = value["interval_95"]
        ax.axhspan(lo, hi, color="tab:green", alpha=0.12)
        text = f"policy value J = {value['mean']:.3g}, 95 % [{lo:.3g}, {hi:.3g}]"
        ax.axhline(value["mean"], color="tab:green", linewidth=1, label=text)
    if getattr(result, "feasible", None) is not None:
        if not np.all(result.feasible):
            bad = ~result.feasible
            ax.plot(x[bad], result.value_mean[bad], "x", color="tab:red", ms=6,
                    label="outside the feasible range")  # fmt: skip
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
    return figure_bytes(fig, "png", dpi=120)
