"""Offline transitions and the Bellman operator ``G P`` (theory page).

Shapes: n transitions, d input features (state and action encoded together),
k candidate next actions per transition (k = 1 for a deterministic policy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Transitions", "discounts", "check_probability_rows"]


def discounts(gamma: float, terminated) -> np.ndarray:
    """Per-transition discount ``g_i = gamma * (1 - terminated_i)`` (theory page, Conventions).

    A transition cut by a time limit (truncated, not terminated) keeps ``gamma``.
    """
    if not np.isfinite(gamma) or not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma!r}")
    terminated = np.asarray(terminated)
    if terminated.ndim != 1:
        raise ValueError(f"terminated must have shape (n,), got shape {terminated.shape}")
    return gamma * (1.0 - terminated.astype(np.float64))


def check_probability_rows(name: str, probs: np.ndarray) -> np.ndarray:
    """Require (n, k) rows of probabilities: entries >= 0, each row summing to 1 (1e-6)."""
    if np.any(probs < 0):
        raise ValueError(f"{name}: probabilities must be >= 0")
    sums = probs.sum(axis=1)
    if not np.allclose(sums, 1.0, rtol=0, atol=1e-6):
        worst = int(np.argmax(np.abs(sums - 1)))
        raise ValueError(f"{name}: each row must sum to 1 (row {worst} sums to {sums[worst]:.6g})")
    return probs


def _float_array(name, value, ndim_allowed):
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Transitions.{name}: cannot convert to a float array ({err})") from None
    if arr.ndim not in ndim_allowed:
        want = " or ".join(f"{k}-D" for k in ndim_allowed)
        raise ValueError(f"Transitions.{name}: expected a {want} array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"Transitions.{name}: contains {bad} NaN or infinite value(s)")
    return arr


@dataclass(frozen=True, eq=False)
class Transitions:
    """A dataset of transitions for TD policy evaluation.

    Args:
        x: (n, d) inputs, the (state, action) features of each transition.
        reward: (n,) rewards.
        x_next: (n, d) next inputs (s', pi(s')) for a deterministic target
            policy, or (n, k, d) candidate next inputs for a stochastic one.
        discount: (n,) per-transition discounts ``gamma * (1 - terminated)``,
            each in [0, 1] (see `discounts`).
        next_weights: (n, k) probabilities of the candidate next inputs (each
            row non-negative, summing to 1); required iff x_next is 3-D with
            k > 1, defaults to ones for k = 1.

    The arrays are stored as float64 and validated on construction.
    """

    x: np.ndarray
    reward: np.ndarray
    x_next: np.ndarray
    discount: np.ndarray
    next_weights: np.ndarray | None = None

    def __post_init__(self):
        x = _float_array("x", self.x, (2,))
        reward = _float_array("reward", self.reward, (1,))
        x_next = _float_array("x_next", self.x_next, (2, 3))
        discount = _float_array("discount", self.discount, (1,))
        n, d = x.shape
        if n == 0:
            raise ValueError("Transitions.x: the dataset is empty (0 transitions); give n >= 1")
        if x_next.ndim == 2:
            x_next = x_next[:, None, :]
        for name, arr in (("reward", reward), ("x_next", x_next), ("discount", discount)):
            if arr.shape[0] != n:
                raise ValueError(
                    f"Transitions.{name}: has {arr.shape[0]} rows but x has {n} transitions"
                )
        if x_next.shape[2] != d:
            raise ValueError(
                f"Transitions.x_next: has {x_next.shape[2]} features per input but x has {d}"
            )
        if np.any(discount < 0) or np.any(discount > 1):
            raise ValueError(
                "Transitions.discount: every discount must lie in [0, 1] "
                f"(got min {discount.min():g}, max {discount.max():g}); "
                "use discounts(gamma, terminated)"
            )
        k = x_next.shape[1]
        if self.next_weights is None:
            if k != 1:
                raise ValueError(
                    f"Transitions.next_weights: required when x_next has k={k} candidate "
                    "next inputs per transition (shape (n, k) of probabilities)"
                )
            weights = np.ones((n, 1))
        else:
            weights = _float_array("next_weights", self.next_weights, (1, 2))
            if weights.ndim == 1:
                weights = weights[:, None]
            if weights.shape != (n, k):
                raise ValueError(
                    f"Transitions.next_weights: expected shape ({n}, {k}) to match x_next, "
                    f"got {weights.shape}"
                )
            check_probability_rows("Transitions.next_weights", weights)
        for name, arr in (
            ("x", x),
            ("reward", reward),
            ("x_next", x_next),
            ("discount", discount),
            ("next_weights", weights),
        ):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @classmethod
    def from_gamma(cls, x, reward, x_next, gamma, terminated=None, next_weights=None):
        """Build from a scalar gamma and an optional (n,) `terminated` mask."""
        n = np.shape(x)[0]
        terminated = np.zeros(n, bool) if terminated is None else terminated
        return cls(x, reward, x_next, discounts(gamma, terminated), next_weights)

    @property
    def n(self) -> int:
        """Number of transitions |D|."""
        return self.x.shape[0]

    @property
    def input_dim(self) -> int:
        return self.x.shape[1]

    @property
    def k(self) -> int:
        """Candidate next inputs per transition."""
        return self.x_next.shape[1]

    @property
    def x_next_flat(self) -> np.ndarray:
        """(n * k, d) all candidate next inputs X'' (row i * k + j is candidate j of i)."""
        return self.x_next.reshape(-1, self.input_dim)

    def bellman(self, values) -> np.ndarray:
        """Apply ``G P``: (n * k, ...) values at X'' -> (n, ...) discounted expectations.

        ``(G P v)_i = g_i * sum_j w_ij v_{ik+j}`` (theory page: stochastic target policy).
        """
        values = np.asarray(values)
        v = values.reshape((self.n, self.k) + values.shape[1:])
        w = self.discount[:, None] * self.next_weights
        return np.einsum("ij,ij...->i...", w, v)

    def subset(self, index) -> Transitions:
        """The transitions at `index` (an index array or a boolean mask)."""
        return Transitions(
            self.x[index],
            self.reward[index],
            self.x_next[index],
            self.discount[index],
            self.next_weights[index],
        )
