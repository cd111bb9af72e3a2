"""Fully connected networks in the NTK parametrisation (paper eq. 3-4).

One `MLP` object gives both views of the same architecture, so they cannot
drift apart:

* the finite network: ``params = net.init(key, d)``, ``q = net.apply(params, x)``;
* its infinite-width kernels: ``nngp, ntk = net.kernels(x1, x2)`` (float64).

NTK parametrisation: layer l computes ``z = sigma_w / sqrt(n_in) * h @ omega +
sigma_b * beta`` with ``omega, beta ~ N(0, 1)`` the trainable parameters, so
the empirical NTK (Jacobian products over omega and beta) converges to the
analytic one as the width grows.

Shapes: n1, n2 inputs, d input width, P parameters.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MLP", "ACTIVATIONS"]

Activation = Literal["relu", "erf", "identity"]
ACTIVATIONS = typing.get_args(Activation)

# ---------------------------------------------------------------------- kernel recursion
# How the kernels are computed (at least as fast as neural-tangents'; see
# benchmarks/bench_kernels.py):
#
# * One fused pass over the entries. Every per-entry quantity of every layer (the
#   input dot product, the cosine, the arc-cosine, the NNGP and NTK updates) is
#   elementwise in (i, j), so XLA fuses the whole recursion into one loop. Both
#   outputs leave that loop as the real and imaginary parts of one complex128 array
#   (`_pair`): XLA on CPU has no multi-output loop fusion, and two float64 outputs
#   recompute the recursion in each output's loop and store the square roots in
#   between (measured 2.2x the time of the complex loop).
# * Per-input factors (square root of the layer's diagonal and its inverse) come
#   from the same layer function applied to the diagonal, once per input, so the
#   per-entry loop has no division (relu) and two square roots per layer.
# * arcsin / arccos from a polynomial derived here (`_ASIN_COEFFS`) in plain
#   arithmetic that XLA vectorises: XLA's float64 acos is a scalar call (measured
#   ~35 M/s here against ~170 M/s for this one).

# Rows (of x1) and columns (of x2) per block in `MLP.kernels`, at most: one complex128
# block is 16 * rows * cols bytes (8 MiB), and the recursion holds no other array of
# that shape. Blocks that stay in cache until they are copied out: 2.3x faster than
# 1024 x 4096 at 5,096 points (measured). The kernel of a set with itself is computed
# in square blocks of `_KERNEL_BLOCK_ROWS` on and above the diagonal only, and mirrored.
_KERNEL_BLOCK_ROWS = 256
_KERNEL_BLOCK_COLS = 2048
# Input widths up to this are multiplied out inside the fused loop (one multiply-add
# per feature per entry); wider inputs go through a matrix product first.
_FUSED_DOT_MAX_FEATURES = 32
# relu: cosines at or above this are taken as exactly 1, so identical inputs get
# exactly the diagonal's kernel values (their cosine comes out of rounding as 1 +- a
# few ulp, and arccos turns 1 ulp below 1 into 1.5e-8 of angle, ~5e-9 of the NTK).
# A pair this close (angle < 8.4e-8) has a computed cosine that is rounding noise at
# that level anyway.
_COS_SNAP = 1.0 - 2.0**-48

# arcsin(y) = y + y z P(z), z = y^2 <= 1/4, P of degree 12.  Derivation (recomputed
# exactly in tests/test_nets.py): the Taylor series of (arcsin(sqrt z) / sqrt z - 1) / z,
# sum_{n >= 1} C(2n, n) / (4^n (2n + 1)) z^(n - 1), to 120 terms in rational
# arithmetic, rewritten in Chebyshev polynomials T_k(8z - 1) of [0, 1/4] (Chebyshev
# economisation), truncated after T_12 (the dropped coefficients sum to 1.4e-17, P
# >= 1/6), back to powers of z and each rounded once to float64.  With the reduction
# arccos(a) = 2 arcsin(sqrt((1 - a) / 2)) for a > 1/2 (1 - a is exact there) the
# arccos is within 1 ulp of numpy.arccos on [-1, 1] (measured in the tests).
_ASIN_COEFFS = (
    0.16666666666666669,
    0.0749999999999834,
    0.04464285714653523,
    0.03038194412500875,
    0.022372173467043486,
    0.017352380709839098,
    0.01397138708310213,
    0.011477517005507167,
    0.01033337215296726,
    0.005413184483715509,
    0.01751883397953867,
    -0.015032162599250314,
    0.028878362746452394,
)


def _poly(z, coeffs):
    """sum_k coeffs[k] z^k by Estrin's scheme: a short dependency chain (the loop is
    latency-bound with Horner's, measured 1.5x slower)."""
    terms = [coeffs[i] + coeffs[i + 1] * z for i in range(0, len(coeffs) - 1, 2)]
    if len(coeffs) % 2:
        terms.append(coeffs[-1])
    power = z * z
    while len(terms) > 1:
        terms = [
            terms[i] + power * terms[i + 1] if i + 1 < len(terms) else terms[i]
            for i in range(0, len(terms), 2)
        ]
        power = power * power
    return terms[0]


def _half_asin(a):
    """For a in [0, 1]: (p, reduced, sqrt(1 - a^2)), p = arcsin(a) where not reduced
    (a <= 1/2), else p = arcsin(sqrt((1 - a) / 2)) = arccos(a) / 2."""
    reduced = a > 0.5
    zr = 0.5 * (1.0 - a)
    y = jnp.where(reduced, jnp.sqrt(zr), a)
    z = jnp.where(reduced, zr, a * a)
    p = y + y * z * _poly(z, _ASIN_COEFFS)
    return p, reduced, jnp.sqrt((1.0 - a) * (1.0 + a))


def _arccos_neg(c):
    """(arccos(-c), sqrt(1 - c^2)) for c in [-1, 1]: pi - arccos(c), without cancellation
    at c -> -1."""
    p, reduced, w = _half_asin(jnp.abs(c))
    neg = c < 0
    psi = jnp.where(
        reduced, jnp.where(neg, 2.0 * p, np.pi - 2.0 * p), np.pi / 2 + jnp.where(neg, -p, p)
    )
    return psi, w


def _arcsin(s):
    """(arcsin(s), sqrt(1 - s^2)) for s in [-1, 1]."""
    p, reduced, w = _half_asin(jnp.abs(s))
    mag = jnp.where(reduced, np.pi / 2 - 2.0 * p, p)
    return jnp.where(s < 0, -mag, mag), w


# Per activation: `factors(k)` turns a layer's diagonal values k(x, x) into per-input
# factors; `step(k12, f1, f2, sw2, sb2)` gives, per entry, the next layer's NNGP
# sw2 E[phi(u) phi(v)] + sb2 and the NTK's multiplier sw2 E[phi'(u) phi'(v)] for
# (u, v) ~ N(0, [[k11, k12], [k12, k22]]), from k12 and both inputs' factors.
def _relu_factors(k):
    s = jnp.sqrt(k)
    return s, 1.0 / jnp.maximum(s, 1e-150)  # finite r1 * r2: a zero input gets cosine 0


def _relu_step(k12, f1, f2, sw2, sb2):
    """Arc-cosine kernels of degree 1 and 0 (Cho & Saul 2009); c = k12 / sqrt(k11 k22):
    E[relu(u) relu(v)] = sqrt(k11 k22) (sqrt(1 - c^2) + (pi - arccos c) c) / (2 pi),
    E[relu'(u) relu'(v)] = (pi - arccos c) / (2 pi)."""
    (s1, r1), (s2, r2) = f1, f2
    c = k12 * (r1 * r2)  # symmetric in the two inputs to the last bit
    c = jnp.where(c >= _COS_SNAP, 1.0, jnp.maximum(c, -1.0))
    psi, w = _arccos_neg(c)
    g = sw2 / (2 * np.pi)
    return g * (s1 * s2) * (w + psi * c) + sb2, g * psi


def _erf_factors(k):
    return (1.0 / jnp.sqrt(1.0 + 2.0 * k),)


def _erf_step(k12, f1, f2, sw2, sb2):
    """Arcsine kernel (Williams 1997); q = 1 / sqrt(1 + 2 k) per input, s = 2 k12 q1 q2:
    E[erf(u) erf(v)] = (2 / pi) arcsin(s), E[erf'(u) erf'(v)] = (4 / pi) / sqrt((1 + 2 k11)
    (1 + 2 k22) - 4 k12^2) = (4 / pi) q1 q2 / sqrt(1 - s^2)."""
    (q1,), (q2,) = f1, f2
    q = q1 * q2
    s = jnp.clip(2.0 * k12 * q, -1.0, 1.0)
    asin, w = _arcsin(s)
    return (2 * sw2 / np.pi) * asin + sb2, (4 * sw2 / np.pi) * q / w


def _identity_factors(k):
    return ()


def _identity_step(k12, f1, f2, sw2, sb2):
    return sw2 * k12 + sb2, jnp.full_like(k12, sw2)


_LAYERS = {
    "relu": (_relu_factors, _relu_step),
    "erf": (_erf_factors, _erf_step),
    "identity": (_identity_factors, _identity_step),
}
_PHIS = {"relu": jax.nn.relu, "erf": jax.scipy.special.erf, "identity": lambda z: z}


def _input_kernel(x1, x2, weight_var, bias_var):
    """K^1 = sw2 x1.x2 / d + sb2, (n1, n2). Narrow inputs: a sum of products that XLA fuses
    into the recursion's loop, in the order of `_input_diagonal` (identical inputs give
    identical values)."""
    d = x1.shape[1]
    if d > _FUSED_DOT_MAX_FEATURES:
        dot = x1 @ x2.T
    else:
        x2t = x2.T
        dot = x1[:, :1] * x2t[:1]
        for f in range(1, d):
            dot = dot + x1[:, f : f + 1] * x2t[f : f + 1]
    return (weight_var / d) * dot + bias_var


def _input_diagonal(x, weight_var, bias_var):
    d = x.shape[1]
    if d > _FUSED_DOT_MAX_FEATURES:
        sq = jnp.sum(x * x, axis=1)
    else:
        sq = x[:, 0] * x[:, 0]
        for f in range(1, d):
            sq = sq + x[:, f] * x[:, f]
    return (weight_var / d) * sq + bias_var


def _diagonal_chain(x, activation, depth, weight_var, bias_var):
    """The factors of each input per layer, and the diagonal NNGP and NTK (n,), (n,)."""
    factors, step = _LAYERS[activation]
    k = _input_diagonal(x, weight_var, bias_var)
    theta = k
    per_layer = []
    for _ in range(depth):
        f = factors(k)
        per_layer.append(f)
        k, dtheta = step(k, f, f, weight_var, bias_var)
        theta = k + dtheta * theta
    return per_layer, k, theta


def _pair(x1, x2, activation, depth, weight_var, bias_var):
    """NNGP + 1j NTK, (n1, n2) complex128: the recursion fused into one loop."""
    step = _LAYERS[activation][1]
    f1 = _diagonal_chain(x1, activation, depth, weight_var, bias_var)[0]
    f2 = _diagonal_chain(x2, activation, depth, weight_var, bias_var)[0]
    k = _input_kernel(x1, x2, weight_var, bias_var)
    theta = k
    for a, b in zip(f1, f2, strict=True):
        rows, cols = [v[:, None] for v in a], [v[None, :] for v in b]
        k, dtheta = step(k, rows, cols, weight_var, bias_var)
        theta = k + dtheta * theta
    return jax.lax.complex(k, theta)


_STATICS = ("activation", "depth", "weight_var", "bias_var")
# 512-bit vectors where the CPU has them (measured 1.3x faster on this loop).
_kernel_pair_cpu = jax.jit(
    _pair, static_argnames=_STATICS, compiler_options={"xla_cpu_prefer_vector_width": 512}
)
_kernel_pair_other = jax.jit(_pair, static_argnames=_STATICS)


def _kernel_pair(x1, x2, **static):
    """`_pair` jitted for the default backend: NNGP + 1j NTK as one complex128 array."""
    fn = _kernel_pair_cpu if jax.default_backend() == "cpu" else _kernel_pair_other
    return fn(x1, x2, **static)


@partial(jax.jit, static_argnames=_STATICS)
def _kernel_recursion(x1, x2, activation, depth, weight_var, bias_var):
    """NNGP and NTK (n1, n2) by the layer recursion; call under ``jax.enable_x64``.

    A pure function of x1 and x2 (traceable: usable inside ``jax.lax.map``). Where
    the consumer can take NNGP + 1j NTK as one complex array (e.g. ``z @ v`` gives
    K v + 1j Theta v for a real v), `_pair` saves the two passes that split it.
    """
    if x1.shape[0] == 0 or x2.shape[0] == 0:
        empty = jnp.zeros((x1.shape[0], x2.shape[0]), jnp.float64)
        return empty, empty
    z = _pair(x1, x2, activation, depth, weight_var, bias_var)
    # XLA would rewrite real(complex(k, theta)) into k and recompute the recursion in
    # each output's loop (no multi-output loop fusion on CPU; an optimization_barrier
    # does not survive to fusion there). Dividing by a 1 that XLA cannot see is 1 (an
    # exact division: (a + bi) / (1 + 0i) = a + bi) makes z expensive to duplicate, so
    # it is computed once and stored: 2x faster on CPU (measured).
    x = x1[0, 0]
    one = jnp.where(jnp.isfinite(x), 1.0 + 0.0 * x, 1.0)
    z = z / jax.lax.complex(one, 0.0 * one)
    return jnp.real(z), jnp.imag(z)


@partial(jax.jit, static_argnames=_STATICS)
def _diagonal_recursion(x, activation, depth, weight_var, bias_var):
    return _diagonal_chain(x, activation, depth, weight_var, bias_var)[1:]


def _pad_rows(x, size):
    """x with its last row repeated up to a multiple of `size` rows."""
    extra = -x.shape[0] % size
    return x if extra == 0 else np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])


def _block_size(n, most):
    """Near-equal blocks of at most `most` (rounded up to 8) covering n."""
    count = -(-n // most)
    size = -(-n // count)
    return size + (-size % 8)


def _store_block(nngp, ntk, rows, cols, z, mirror=False):
    """Copy a complex block into place; `mirror`: also its transpose, below the diagonal."""
    z = np.asarray(z)[: rows.stop - rows.start, : cols.stop - cols.start]
    for out, part in ((nngp, z.real), (ntk, z.imag)):
        out[rows, cols] = part
        if mirror and cols.start > rows.start:
            # 16 rows at a time: 5x faster than one transposed copy (cache-sized pieces)
            for a in range(0, part.shape[0], 16):
                b = min(a + 16, part.shape[0])
                out[cols, rows.start + a : rows.start + b] = part[a:b].T


@partial(jax.jit, static_argnums=(1, 2))
def _assemble(grid, n1, n2):
    """(NNGP, NTK) (n1, n2) from a grid of complex blocks (list of rows of blocks)."""
    z = jnp.concatenate([jnp.concatenate(row, axis=1) for row in grid], axis=0)[:n1, :n2]
    return jnp.real(z), jnp.imag(z)


@dataclass(frozen=True)
class MLP:
    """A fully connected network with `depth` hidden layers of `width` units and one output.

    Args:
        depth: number of hidden layers (>= 0; 0 is a linear model).
        width: units per hidden layer (used by the finite network only).
        activation: "relu", "erf" or "identity".
        weight_var: sigma_w^2 of eq. 4.
        bias_var: sigma_b^2 of eq. 4.
    """

    depth: int = field(default=2, metadata={"help": "Hidden layers (0: a linear model)."})
    width: int = field(
        default=1024, metadata={"help": "Units per hidden layer (finite networks only)."}
    )
    activation: Activation = field(default="relu", metadata={"help": "Nonlinearity."})
    weight_var: float = field(default=1.0, metadata={"help": "sigma_w^2 (eq. 4)."})
    bias_var: float = field(default=0.1, metadata={"help": "sigma_b^2 (eq. 4)."})

    def __post_init__(self):
        if not isinstance(self.depth, int | np.integer) or self.depth < 0:
            raise ValueError(f"MLP: depth must be an integer >= 0, got {self.depth!r}")
        if not isinstance(self.width, int | np.integer) or self.width < 1:
            raise ValueError(f"MLP: width must be an integer >= 1, got {self.width!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"MLP: activation must be one of {ACTIVATIONS}, got {self.activation!r}"
            )
        for name in ("weight_var", "bias_var"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"MLP: {name} must be finite and >= 0, got {value!r}")

    # ------------------------------------------------------------------ finite network
    def init(self, key: jax.Array, input_dim: int, dtype=jnp.float32) -> list[dict]:
        """Draw standard-normal parameters omega, beta (eq. 4).

        Returns a list of ``depth + 1`` layers, each ``{"w": (n_in, n_out), "b": (n_out,)}``.
        """
        sizes = [int(input_dim)] + [int(self.width)] * self.depth + [1]
        keys = jax.random.split(key, len(sizes) - 1)
        params = []
        for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
            kw, kb = jax.random.split(k)
            params.append(
                {
                    "w": jax.random.normal(kw, (n_in, n_out), dtype),
                    "b": jax.random.normal(kb, (n_out,), dtype),
                }
            )
        return params

    def apply(self, params: list[dict], x: jax.Array) -> jax.Array:
        """Q-values of the finite network, eq. 3: x (n, d) -> (n,)."""
        phi = _PHIS[self.activation]
        sw, sb = np.sqrt(self.weight_var), np.sqrt(self.bias_var)
        h = x
        for i, layer in enumerate(params):
            z = (sw / np.sqrt(layer["w"].shape[0])) * (h @ layer["w"]) + sb * layer["b"]
            h = phi(z) if i < len(params) - 1 else z
        return h[..., 0]

    # ------------------------------------------------------------------ infinite width
    def kernels(self, x1, x2=None) -> tuple[np.ndarray, np.ndarray]:
        """Analytic NNGP kernel K and NTK Theta of the network output, float64.

        Layer recursion (Lee et al. 2019, app. C, NTK parametrisation), jitted
        and fused by XLA in float64 (a local ``jax.enable_x64`` scope):
        ``K^1 = sw2 x.x'/d + sb2``, ``Theta^1 = K^1``;
        ``K^{l+1} = sw2 E[phi(u) phi(v)] + sb2``,
        ``Theta^{l+1} = K^{l+1} + sw2 E[phi'(u) phi'(v)] Theta^l``.

        Args:
            x1: (n1, d) inputs.
            x2: (n2, d) inputs; ``None`` means x1.
        Returns:
            nngp (n1, n2), ntk (n1, n2), both float64.
        """
        x1 = self._check_inputs(x1, "x1")
        x2 = x1 if x2 is None else self._check_inputs(x2, "x2")
        if x1.shape[1] != x2.shape[1]:
            raise ValueError(
                f"kernels: x1 has {x1.shape[1]} features per input but x2 has {x2.shape[1]}"
            )
        symmetric = x2 is x1 or (x2.shape == x1.shape and np.array_equal(x1, x2))
        nngp = np.empty((x1.shape[0], x2.shape[0]))
        ntk = np.empty_like(nngp)
        pending = None
        with jax.enable_x64(True):
            for block in self._pair_blocks(x1, x2, symmetric):
                if pending is not None:  # copy out the previous block while this one computes
                    _store_block(nngp, ntk, *pending, mirror=symmetric)
                pending = block
        if pending is not None:
            _store_block(nngp, ntk, *pending, mirror=symmetric)
        return nngp, ntk

    def device_kernels(self, x1, x2=None) -> tuple[jax.Array, jax.Array]:
        """`kernels` as float64 JAX arrays on the default device (no copy to the host).

        Call it inside a ``jax.enable_x64`` scope to keep working with the results.
        """
        x1 = self._check_inputs(x1, "x1")
        x2 = x1 if x2 is None else self._check_inputs(x2, "x2")
        if x1.shape[1] != x2.shape[1]:
            raise ValueError(
                f"kernels: x1 has {x1.shape[1]} features per input but x2 has {x2.shape[1]}"
            )
        with jax.enable_x64(True):
            if x1.shape[0] == 0 or x2.shape[0] == 0:
                empty = jnp.zeros((x1.shape[0], x2.shape[0]), jnp.float64)
                return empty, empty
            grid = {}
            for rows, _, z in self._pair_blocks(x1, x2):
                grid.setdefault(rows.start, []).append(z)
            return _assemble([grid[r] for r in sorted(grid)], x1.shape[0], x2.shape[0])

    def _pair_blocks(self, x1, x2, symmetric=False):
        """Yield (rows, cols, NNGP + 1j NTK block) over blocks of at most
        `_KERNEL_BLOCK_ROWS` x `_KERNEL_BLOCK_COLS` entries, dispatched asynchronously;
        iterate inside a ``jax.enable_x64`` scope. `symmetric` (x2 equal to x1): square
        blocks on and above the diagonal only.

        Every block has the same shape (near-equal blocks; the inputs are padded by
        repeating their last row), so the recursion compiles once per problem shape.
        """
        n1, n2 = x1.shape[0], x2.shape[0]
        if n1 == 0 or n2 == 0:
            return
        rb = _block_size(n1, _KERNEL_BLOCK_ROWS)
        cb = rb if symmetric else _block_size(n2, _KERNEL_BLOCK_COLS)
        static = self._static()
        x1p, x2p = _pad_rows(x1, rb), _pad_rows(x2, cb)
        col_blocks = [jnp.asarray(x2p[c : c + cb]) for c in range(0, n2, cb)]
        for r in range(0, n1, rb):
            row_block = jnp.asarray(x1p[r : r + rb])
            for j, c in enumerate(range(0, n2, cb)):
                if symmetric and c < r:
                    continue  # mirrored from the block (c, r)
                z = _kernel_pair(row_block, col_blocks[j], **static)
                yield slice(r, min(r + rb, n1)), slice(c, min(c + cb, n2)), z

    def kernel_diagonals(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Diagonals of `kernels(x, x)` without forming the (n, n) matrices: (n,), (n,)."""
        x = self._check_inputs(x, "x")
        with jax.enable_x64(True):
            k, theta = _diagonal_recursion(jnp.asarray(x), **self._static())
            return np.asarray(k), np.asarray(theta)

    def _static(self):
        return dict(
            activation=self.activation,
            depth=int(self.depth),
            weight_var=float(self.weight_var),
            bias_var=float(self.bias_var),
        )

    @staticmethod
    def _check_inputs(x, name):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"kernels: {name} must have shape (n, d), got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"kernels: {name} contains NaN or infinite values")
        return x
