"""The outputs of `tdntk compare`: values.csv, differences.csv, compare.md, compare.png and
summary.json, written from a `tdntk.experiments.compare.Comparison` (duck-typed: names,
values, differences, summary) into a staged folder (a failure leaves nothing partial).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes, staged_output_dir, write_csv, write_json, write_text
from .plotting import figure_bytes, new_figure

__all__ = ["write_comparison", "comparison_markdown"]


def _f(x) -> str:
    x = float(x)
    if not np.isfinite(x):
        return str(x)
    return f"{x:.4g}"


def comparison_markdown(result) -> str:
    """Two tables: each policy's J with its interval, and every pair's difference."""
    v = result.values
    lines = [
        "# Policy comparison",
        "",
        f"Interval method: {result.summary['interval']['description']}.",
        "",
        "| policy | J | std | 95 % interval | ensemble std | sampling std | feasible |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in result.names:
        p = v[name]
        lo, hi = p.interval_95
        lines.append(
            f"| {name} | {_f(p.mean)} | {_f(p.std)} | [{_f(lo)}, {_f(hi)}] | "
            f"{_f(p.ensemble_std)} | {_f(p.sampling_std)} | {'yes' if p.feasible else '**no**'} |"
        )
    lines += [
        "",
        "| a | b | J_a - J_b | std | 95 % interval | P(J_a > J_b) |",
        "|---|---|---|---|---|---|",
    ]
    for d in result.differences:
        lo, hi = d.interval_95
        lines.append(
            f"| {d.a} | {d.b} | {_f(d.mean)} | {_f(d.std)} | [{_f(lo)}, {_f(hi)}] | "
            f"{d.prob_greater:.3f} |"
        )
    lines += [
        "",
        "P(J_a > J_b) is read off the t distribution of the interval: a confidence statement "
        "about the sign of the difference, not a Bayesian posterior. The difference's jackknife "
        "uses the same groups of episodes for both policies, so it keeps the correlation of two "
        "estimates from the same data.",
    ]
    if result.summary["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result.summary["warnings"]]
    return "\n".join(lines) + "\n"


def _figure(result) -> bytes:
    fig, (left, right) = new_figure(1, 2, size=(5.0, 3.6))
    names = result.names
    pos = np.arange(len(names))
    means = np.array([result.values[n].mean for n in names])
    los = np.array([result.values[n].interval_95[0] for n in names])
    his = np.array([result.values[n].interval_95[1] for n in names])
    left.errorbar(pos, means, yerr=np.vstack([means - los, his - means]), fmt="o", capsize=4)
    lo_view, hi_view = left.get_ylim()
    for bound in result.values[names[0]].feasible_range:  # the same rewards for all
        if np.isfinite(bound) and lo_view <= bound <= hi_view:
            left.axhline(bound, color="tab:red", linestyle="--", linewidth=0.8)
            left.text(pos[0], bound, " feasible range of the rewards", color="tab:red",
                      fontsize=7, va="bottom")  # fmt: skip
    left.set_ylim(lo_view, hi_view)
    left.set_xticks(pos, names, rotation=20, fontsize=8)
    left.set(ylabel="policy value J", title="J with its 95 % interval")
    diffs = result.differences
    dpos = np.arange(len(diffs))
    dm = np.array([d.mean for d in diffs])
    dlo = np.array([d.interval_95[0] for d in diffs])
    dhi = np.array([d.interval_95[1] for d in diffs])
    right.errorbar(dm, dpos, xerr=np.vstack([dm - dlo, dhi - dm]), fmt="o", capsize=4,
                   color="tab:purple")  # fmt: skip
    right.axvline(0.0, color="black", linewidth=0.8)
    right.set_yticks(
        dpos, [f"{d.a} - {d.b}\nP(>) = {d.prob_greater:.2f}" for d in diffs], fontsize=7
    )
    right.set(xlabel="J_a - J_b", title="differences, 95 % intervals")
    right.invert_yaxis()
    return figure_bytes(fig, "png", dpi=120)


def write_comparison(result, out) -> Path:
    """Write the comparison into the folder `out` (staged)."""
    names = result.names
    v = result.values
    policy_columns = {
        "policy": names,
        "value": [v[n].mean for n in names],
        "std": [v[n].std for n in names],
        "lo_95": [v[n].interval_95[0] for n in names],
        "hi_95": [v[n].interval_95[1] for n in names],
        "ensemble_std": [v[n].ensemble_std for n in names],
        "sampling_std": [v[n].sampling_std for n in names],
        "feasible": [int(v[n].feasible) for n in names],
    }
    d = result.differences
    diff_columns = {
        "a": [x.a for x in d],
        "b": [x.b for x in d],
        "difference": [x.mean for x in d],
        "std": [x.std for x in d],
        "lo_95": [x.interval_95[0] for x in d],
        "hi_95": [x.interval_95[1] for x in d],
        "prob_a_greater": [x.prob_greater for x in d],
    }
    png = _figure(result)
    with staged_output_dir(out) as tmp:
        write_csv(tmp / "values.csv", policy_columns)
        write_csv(tmp / "differences.csv", diff_columns)
        write_text(tmp / "compare.md", comparison_markdown(result))
        atomic_write_bytes(tmp / "compare.png", png)
        write_json(tmp / "summary.json", result.summary)
    return Path(out)
