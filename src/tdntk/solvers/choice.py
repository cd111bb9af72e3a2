"""Which route computes the closed form: the memory each needs, and ``solver="auto"``.

* dense: both kernels on the N distinct inputs (2 N^2 floats) and, while
  they are built and mapped to the p coordinates, as many again in blocks
  and gathered rows (~8 N^2 at the peak, measured: 4.6 GB at N = 8,194,
  p = 4,000), the p x p driving kernel, its eigenvectors and Kbar (~6 p^2),
  the test blocks (2 b N for b = 2048 rows); TD at a finite t adds the
  3r x 3r augmented exponential and the cached semigroup (~60 p^2, measured:
  8.5 GB at N = p = 4,001).
* krylov: the kernels are touched in row blocks of ~4M entries (or cached
  when 2 N^2 floats fit, see `KernelProducts`); Krylov bases of up to
  `max_iterations` vectors of length 2p, the rank-k projection
  (~6 N k + 4 p k floats) and, for TD at t = inf, the Bellman preconditioner's
  rank-`BELLMAN_RANK` factor and Woodbury blocks (~1024 (N + 3 p) floats).

``auto`` takes the dense route when it fits in half the default device's
free memory, else the matrix-free one (an `MLP`'s kernels only).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Krylov", "dense_bytes", "krylov_bytes", "choose_solver", "SOLVERS"]

SOLVERS = ("auto", "dense", "krylov")
# Rank of the kernel factor in the TD fixed point's Bellman preconditioner (`tdntk.solvers.krylov`).
BELLMAN_RANK = 1024


@dataclass(frozen=True)
class Krylov:
    """Settings of the matrix-free route (``TDNTK(..., solver=Krylov(...))``).

    Args:
        tol: relative tolerance of every Krylov solve (basis growth, CG, BiCGStab, GMRES).
        rank: k, the rank of the Galerkin projection behind the covariance,
            the critical learning rate and the stability check (capped at p).
        cache_bytes: keep both kernels in device memory when they fit in this
            many bytes (None: half the free memory; 0: never).
        max_iterations: cap on Krylov basis sizes and CG / BiCGStab / GMRES kernel products.
    """

    tol: float = 1e-8
    rank: int = 256
    cache_bytes: int | None = None
    max_iterations: int = 2048

    def __post_init__(self):
        if not 0 < self.tol < 1:
            raise ValueError(f"Krylov: tol must lie in (0, 1), got {self.tol!r}")
        if int(self.rank) < 1:
            raise ValueError(f"Krylov: rank must be >= 1, got {self.rank!r}")
        if int(self.max_iterations) < 2:
            raise ValueError(f"Krylov: max_iterations must be >= 2, got {self.max_iterations!r}")


def dense_bytes(n_inputs: int, p: int, td_finite_t: bool, block_rows: int = 2048) -> int:
    """Peak bytes of the dense route (module docstring)."""
    words = 8.0 * n_inputs**2 + 6.0 * p**2 + 2.0 * block_rows * n_inputs
    if td_finite_t:
        words += 60.0 * p**2
    return int(8 * words)


def krylov_bytes(n_inputs: int, p: int, rank: int, max_iterations: int, cached: bool) -> int:
    """Peak bytes of the matrix-free route (module docstring)."""
    words = 6.0 * n_inputs * rank + 4.0 * p * rank + 2.0 * p * min(max_iterations, 2 * p)
    words += min(BELLMAN_RANK, n_inputs) * (n_inputs + 3.0 * p)  # the Bellman preconditioner
    words += 10.0 * min(2**22, n_inputs**2)  # a row block of kernel slices, its temporaries
    if cached:
        words += 2.0 * n_inputs**2
    return int(8 * words)


def choose_solver(solver, n_inputs: int, p: int, td_finite_t: bool, available: int, mlp: bool):
    """ "dense" or a `Krylov` for ``solver`` ("auto", "dense", "krylov" or a `Krylov`)."""
    if isinstance(solver, Krylov):
        return solver
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS} or a tdntk.Krylov(...), got {solver!r}")
    if solver == "krylov":
        return Krylov()
    if solver == "dense" or not mlp:
        return "dense"
    return "dense" if dense_bytes(n_inputs, p, td_finite_t) <= 0.5 * available else Krylov()
