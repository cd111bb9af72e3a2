"""Reduced coordinates: the dynamics on distinct inputs and distinct transitions, with counts.

The closed form depends on the data only through sums over identical inputs,
so repeated inputs (tabular states, discrete actions, trajectories where
x''_i = x_(i+1)) cost nothing (the theory page derives this):

* the kernels are evaluated on the N distinct inputs Y of X and X'' only;
* the duals live on p "groups" of transitions with counts c_g, through the
  orthonormal map ``alpha = U a``, ``U = E diag(c)^(-1/2)`` (E the n x p
  incidence of transitions in groups): every n-vector v of the theory page enters as
  ``U^T v = (group sums of v) / sqrt(c)``;
* residual gradient (single network): groups are identical rows of
  ``D = U - G P V`` (same input, next inputs, discount and next weights), and
  the driving kernel is ``U^T Theta_bar U = L Theta_YY L^T`` with
  ``L = sqrt(c) x (row of e_x - g sum_k P_k e_x''_k)``;
* TD (target network): groups are identical inputs x, the driving kernel
  ``U^T Theta_XX U = L Theta_YY L^T`` with ``L = sqrt(c) e_x``, and the
  bootstrapped block ``U^T G P Theta_X''X U = N Theta_YY L^T`` with
  ``N = c^(-1/2) x (group sum of g P e_x'')``.

Both cases then read, in a-coordinates (p,): driving kernel ``L Theta L^T``,
test kernel ``Theta_*Y L^T``, covariance loading ``C = Lc K_Y*`` and
``Kbar = Lc K Lc^T`` with ``Lc = L`` (residual gradient) or ``L - N`` (TD),
rewards ``U^T r``. This is exact: nothing is approximated.

Shapes: n transitions, k next inputs each, d features, N distinct inputs,
p groups, m test inputs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import numpy as np

from .data import Transitions

__all__ = ["Sparse", "Reduced", "reduce_transitions"]


@dataclass(frozen=True, eq=False)
class Sparse:
    """A (p, N) matrix with few non-zeros, in coordinate form (rows, cols, vals merged).

    `apply` computes ``S M`` for M (N, ...) and `apply_t` ``S^T u`` for u (p, ...),
    as gathers and segment sums (NumPy or JAX arrays alike).
    """

    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def from_triplets(cls, rows, cols, vals, shape) -> Sparse:
        """Merge duplicate (row, col) entries by summing their values; drop zeros."""
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        key = rows * shape[1] + cols
        unique, inverse = np.unique(key, return_inverse=True)
        merged = np.zeros(unique.size)
        np.add.at(merged, inverse, np.asarray(vals, np.float64))
        keep = merged != 0
        r, c = np.divmod(unique[keep], shape[1])
        return cls(r, c, merged[keep], (int(shape[0]), int(shape[1])))

    def __sub__(self, other: Sparse) -> Sparse:
        return Sparse.from_triplets(
            np.concatenate([self.rows, other.rows]),
            np.concatenate([self.cols, other.cols]),
            np.concatenate([self.vals, -other.vals]),
            self.shape,
        )

    def apply(self, m):
        """``S m``: (N, ...) -> (p, ...)."""
        if isinstance(m, jax.Array):
            return _segment_apply(self.rows, self.cols, self.vals, m, self.shape[0])
        out = np.zeros((self.shape[0],) + m.shape[1:], np.result_type(m, np.float64))
        np.add.at(out, self.rows, self.vals.reshape((-1,) + (1,) * (m.ndim - 1)) * m[self.cols])
        return out

    def apply_t(self, u):
        """``S^T u``: (p, ...) -> (N, ...)."""
        return Sparse(self.cols, self.rows, self.vals, self.shape[::-1]).apply(u)

    def dense(self) -> np.ndarray:
        """The (p, N) matrix."""
        out = np.zeros(self.shape)
        np.add.at(out, (self.rows, self.cols), self.vals)
        return out


@functools.partial(jax.jit, static_argnames=("p",))
def _segment_apply(rows, cols, vals, m, p: int):
    """``sum_e vals_e m[cols_e]`` into row ``rows_e``: (N, ...) -> (p, ...)."""
    vals = vals.astype(m.dtype).reshape((-1,) + (1,) * (m.ndim - 1))
    return jax.ops.segment_sum(vals * m[cols], rows, p)


@dataclass(frozen=True, eq=False)
class Reduced:
    """The data of one estimator in reduced coordinates (module docstring).

    Attributes:
        inputs: (N, d) the distinct inputs Y of X and X''.
        load: L (p, N): the driving kernel is ``L Theta_YY L^T``.
        bootstrap: N (p, N) for TD (``S = N Theta_YY L^T``), None for the residual gradient.
        cov_load: Lc (p, N): ``C = Lc K_Y*``, ``Kbar = Lc K_YY Lc^T``.
        group: (n,) the group of each transition.
        counts: (p,) transitions per group.
        n: the number of transitions.
    """

    inputs: np.ndarray
    load: Sparse
    bootstrap: Sparse | None
    cov_load: Sparse
    group: np.ndarray
    counts: np.ndarray
    n: int

    @property
    def p(self) -> int:
        """The number of reduced coordinates (groups)."""
        return self.counts.size

    def coords(self, v) -> np.ndarray:
        """``U^T v``: (n, ...) -> (p, ...), group sums over sqrt(counts)."""
        v = np.asarray(v, np.float64)
        sums = np.zeros((self.p,) + v.shape[1:])
        np.add.at(sums, self.group, v)
        return sums / np.sqrt(self.counts).reshape((-1,) + (1,) * (v.ndim - 1))

    def lift(self, a) -> np.ndarray:
        """``U a``: (p, ...) -> (n, ...), the dual variables of every transition."""
        a = np.asarray(a, np.float64)
        scale = np.sqrt(self.counts).reshape((-1,) + (1,) * (a.ndim - 1))
        return (a / scale)[self.group]


def _distinct_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first index of each distinct row, inverse (rows,)), rows in order of first appearance.

    Rows are hashed to 64 bits (a random linear map of their bit patterns, fixed
    seed) and sorted as integers; equal hashes are then checked to be equal rows
    (a collision, never seen, falls back to `numpy.unique` on the rows).
    """
    a = np.ascontiguousarray(a, dtype=np.float64).reshape(a.shape[0], -1)
    weights = np.random.default_rng(20261128).integers(1, 2**63, a.shape[1], dtype=np.uint64)
    keys = (a.view(np.uint64) * (weights | np.uint64(1))).sum(axis=1, dtype=np.uint64)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    if not np.array_equal(a[first][inverse], a):
        _, first, inverse = np.unique(a, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return first[order], rank[inverse.reshape(-1)]


def reduce_transitions(data: Transitions, td: bool) -> Reduced:
    """The `Reduced` coordinates of `data` for TD (``td=True``) or the residual gradient."""
    if not isinstance(data, Transitions):
        raise TypeError(f"data must be a Transitions, got {type(data).__name__}")
    n, k = data.n, data.k
    first, inverse = _distinct_rows(np.concatenate([data.x, data.x_next_flat]))
    inputs = np.concatenate([data.x, data.x_next_flat])[first]
    x_idx, next_idx = inverse[:n], inverse[n:].reshape(n, k)
    gw = data.discount[:, None] * data.next_weights  # (n, k): G P
    if td:
        key = x_idx[:, None].astype(np.float64)
    else:  # identical rows of D = U - G P V
        key = np.concatenate([x_idx[:, None], next_idx, gw], axis=1).astype(np.float64)
    rep, group = _distinct_rows(key)
    p = rep.size
    counts = np.bincount(group, minlength=p).astype(np.float64)
    root = np.sqrt(counts)
    if td:
        load = Sparse.from_triplets(np.arange(p), x_idx[rep], root, (p, inputs.shape[0]))
        boot = Sparse.from_triplets(
            np.repeat(group, k), next_idx.reshape(-1), (gw / root[group, None]).reshape(-1),
            (p, inputs.shape[0]),
        )  # fmt: skip
        return Reduced(inputs, load, boot, load - boot, group, counts, n)
    rows = np.repeat(np.arange(p), 1 + k)
    cols = np.concatenate([x_idx[rep, None], next_idx[rep]], axis=1).reshape(-1)
    vals = (root[:, None] * np.concatenate([np.ones((p, 1)), -gw[rep]], axis=1)).reshape(-1)
    load = Sparse.from_triplets(rows, cols, vals, (p, inputs.shape[0]))
    return Reduced(inputs, load, None, load, group, counts, n)
