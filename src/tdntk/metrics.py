"""Scores of Gaussian predictive distributions against true values (paper Table 1 and beyond).

Every predictor in this library gives, per evaluation input, a Gaussian
``N(mean, std^2)`` over Q: the TD-NTK closed form directly (eq. 10), an
ensemble of networks through `fit_gaussian` (the paper fits "the Q-values
from the ensemble to the Gaussian function", Table 1). The per-point scores
here compare such a Gaussian with the true return y:

* squared error of the mean -> `rmse` over points;
* `gaussian_nll`: ``-log N(y; mean, std^2)`` (natural log, per point);
* `coverage`: whether y lies in the central interval of probability `level`;
* `crps_gaussian`: the continuous ranked probability score
  ``int (F(x) - 1{y <= x})^2 dx`` in closed form (Gneiting & Raftery 2007),
  in the units of y; for std -> 0 it tends to ``|mean - y|``.

Shapes: m points; every function broadcasts its arguments against each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

__all__ = [
    "rmse",
    "gaussian_nll",
    "coverage",
    "crps_gaussian",
    "fit_gaussian",
    "central_interval_halfwidth",
    "Scores",
    "score_gaussian",
]

_LOG_2PI = float(np.log(2 * np.pi))


def _arrays(mean, std, y, where: str):
    mean, std, y = (np.asarray(a, dtype=np.float64) for a in (mean, std, y))
    try:
        np.broadcast_shapes(mean.shape, std.shape, y.shape)
    except ValueError:
        raise ValueError(
            f"{where}: mean {mean.shape}, std {std.shape} and y {y.shape} do not broadcast"
        ) from None
    if np.any(~(std > 0)):
        bad = float(np.min(std)) if std.size else float("nan")
        raise ValueError(
            f"{where}: std must be > 0 everywhere (got min {bad:g}); floor it explicitly, "
            "e.g. np.maximum(std, min_std), and report the floor"
        )
    return mean, std, y


def rmse(pred, y) -> float:
    """Root mean squared error ``sqrt(mean_i (pred_i - y_i)^2)`` of (m,) predictions."""
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    if pred.shape != y.shape:
        raise ValueError(f"rmse: pred has shape {pred.shape} but y has shape {y.shape}")
    if pred.size == 0:
        raise ValueError("rmse: needs at least one point, got none")
    return float(np.sqrt(np.mean((pred - y) ** 2)))


def gaussian_nll(mean, std, y) -> np.ndarray:
    """Per-point negative log density ``-log N(y; mean, std^2)``: (m,) (std > 0)."""
    mean, std, y = _arrays(mean, std, y, "gaussian_nll")
    z = (y - mean) / std
    return 0.5 * (z**2 + _LOG_2PI) + np.log(std)


def central_interval_halfwidth(level: float) -> float:
    """z with ``P(|Z| <= z) = level`` for a standard normal Z (1.0 for 68.27 %)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    return float(np.sqrt(2.0) * special.erfinv(level))


def coverage(mean, std, y, level: float) -> np.ndarray:
    """Per point, whether y lies in the central interval of probability `level`: (m,) bool.

    The interval is ``mean +- z std`` with z = `central_interval_halfwidth(level)`;
    its mean over points estimates the coverage (calibrated: equal to `level`).
    """
    mean, std, y = _arrays(mean, std, y, "coverage")
    return np.abs(y - mean) <= central_interval_halfwidth(level) * std


def crps_gaussian(mean, std, y) -> np.ndarray:
    """Closed-form CRPS of ``N(mean, std^2)`` at y: (m,), in the units of y (lower is better).

    ``CRPS = std * (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))`` with ``z = (y - mean) / std``.
    """
    mean, std, y = _arrays(mean, std, y, "crps_gaussian")
    z = (y - mean) / std
    cdf = special.ndtr(z)
    pdf = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
    return std * (z * (2 * cdf - 1) + 2 * pdf - 1 / np.sqrt(np.pi))


def fit_gaussian(samples, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood Gaussian of ensemble members: (E, m) -> mean (m,), std (m,).

    The std is the maximum-likelihood one (divides by E, like ``scipy.stats.norm.fit``).
    """
    samples = np.asarray(samples, np.float64)
    if samples.ndim == 0 or samples.shape[axis] < 2:
        raise ValueError(
            f"fit_gaussian: need at least 2 members along axis {axis}, got shape {samples.shape}"
        )
    return samples.mean(axis=axis), samples.std(axis=axis)


@dataclass(frozen=True)
class Scores:
    """Per-point scores of one Gaussian predictor on m points (each (m,)).

    Attributes:
        error: mean - y.
        nll: `gaussian_nll`.
        covered_68, covered_95: `coverage` at 68.27 % (one std) and 95 %.
        crps: `crps_gaussian`.
    """

    error: np.ndarray
    nll: np.ndarray
    covered_68: np.ndarray
    covered_95: np.ndarray
    crps: np.ndarray

    @property
    def rmse(self) -> float:
        return float(np.sqrt(np.mean(self.error**2)))

    def summary(self) -> dict[str, float]:
        """Means over points, plus the spread over points of |error| and NLL (Table 1's +-)."""
        return {
            "rmse": self.rmse,
            "nll": float(np.mean(self.nll)),
            "coverage_68": float(np.mean(self.covered_68)),
            "coverage_95": float(np.mean(self.covered_95)),
            "crps": float(np.mean(self.crps)),
            "abs_error_mean": float(np.mean(np.abs(self.error))),
            "abs_error_std": float(np.std(np.abs(self.error))),
            "nll_std": float(np.std(self.nll)),
        }


def score_gaussian(mean, std, y) -> Scores:
    """All per-point scores of ``N(mean, std^2)`` against y, each (m,)."""
    mean, std, y = _arrays(mean, std, y, "score_gaussian")
    mean, std, y = np.broadcast_arrays(mean, std, y)
    return Scores(
        error=mean - y,
        nll=gaussian_nll(mean, std, y),
        covered_68=coverage(mean, std, y, float(special.erf(1 / np.sqrt(2)))),
        covered_95=coverage(mean, std, y, 0.95),
        crps=crps_gaussian(mean, std, y),
    )
