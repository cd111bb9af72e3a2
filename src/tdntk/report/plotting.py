"""Small matplotlib helpers shared by the reports.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot), so
importing or calling these changes no global matplotlib state (no backend
switch, no rcParams edits) and nothing is drawn on screen.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..files import atomic_write_bytes

__all__ = ["COLORS", "new_figure", "band", "mark_states", "save_figure", "figure_bytes"]

COLORS = {
    "analytic": "tab:blue",
    "mc": "tab:orange",
    "nn": "tab:red",
    "true": "black",
    "data": "tab:green",
}
"""One colour per method, the paper's fig. 4 convention (Lin. blue, MC orange, NNs red)."""


def new_figure(nrows: int = 1, ncols: int = 1, size=(4.0, 3.2), **kwargs) -> tuple[Figure, list]:
    """A Figure with a (nrows x ncols) grid of axes, each `size` inches: (fig, flat axes list)."""
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, list(axes.ravel())


def band(ax: Axes, x, mean, std, label: str, color: str, alpha: float = 0.2, **line) -> None:
    """Plot ``mean`` (m,) against ``x`` (m,) with a shaded +-1 std band."""
    x, mean, std = (np.asarray(a, dtype=np.float64) for a in (x, mean, std))
    ax.plot(x, mean, color=color, label=label, **line)
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=alpha, linewidth=0)


def mark_states(ax: Axes, states, color: str = COLORS["data"], label: str | None = None) -> None:
    """Thin dashed vertical lines at the dataset states (m,), drawn as one collection."""
    ax.vlines(
        np.asarray(states, dtype=np.float64).reshape(-1),
        0.0,
        1.0,
        transform=ax.get_xaxis_transform(),
        colors=color,
        linestyles="--",
        linewidth=0.6,
        alpha=0.5,
        label=label,
    )


_FORMATS = {"png": {"dpi": 150}, "pdf": {"metadata": {"CreationDate": None}}}


def save_figure(fig: Figure, stem, formats=("png", "pdf")) -> list[Path]:
    """Write `fig` as ``<stem>.png`` (150 dpi) and/or ``<stem>.pdf`` atomically; the paths."""
    stem = Path(stem)
    return [
        atomic_write_bytes(stem.with_suffix(f".{fmt}"), figure_bytes(fig, fmt)) for fmt in formats
    ]


def figure_bytes(fig: Figure, fmt: str = "png", **options) -> bytes:
    """`fig` rendered as PNG (150 dpi unless `options` say otherwise) or PDF bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, **(_FORMATS[fmt] | options))
    return buf.getvalue()
