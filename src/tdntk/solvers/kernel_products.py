"""Products with the kernels on the distinct inputs, in row blocks, on every JAX device.

`KernelProducts` computes ``(Theta_YY V, K_YY W)`` for V (N, s), W (N, s') without
storing the N x N kernels: the rows of Y are cut into blocks of b rows, each
block's (b, N) kernel slices are computed by the `MLP`'s recursion and
multiplied at once, and the blocks are spread over all local devices
(`jax.shard_map` over a 1-D mesh; several hosts are not supported). When both
N x N kernels fit in ``cache_bytes`` they are computed once and kept on the
device (then a product is two matrix products): `cached` says which.

The products are pure functions of an array pytree (`state`) and hashable
settings (`spec`), so Krylov iterations can run inside one compiled loop with
the kernels as arguments, never as baked-in constants.

Shapes: N distinct inputs, d features, s right-hand sides, m test inputs, b block rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..dynamics import x64
from ..nets import MLP, _kernel_recursion, _pair

__all__ = ["KernelProducts", "ProductSpec", "kernel_products", "default_cache_bytes"]

# Kernel entries per row block (b rows of N): bounds the (b, N) slices; 64 rows when N is
# large (kept in cache while they are multiplied: measured fastest on CPU).
BLOCK_ENTRIES = 2**22
BLOCK_ROWS = 64


def default_cache_bytes() -> int:
    """Half the free memory of the default device (host RAM for a CPU, via psutil), in bytes."""
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(0.5 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    import psutil

    return int(0.5 * psutil.virtual_memory().available)


@dataclass(frozen=True)
class ProductSpec:
    """Hashable settings of the products: kernel statics, caching, blocks, devices."""

    kernel: tuple
    cached: bool
    block_rows: int
    devices: tuple


class KernelProducts:
    """``(Theta_YY V, K_YY W)`` and test products for one set of distinct inputs Y.

    Args:
        kernels: the `MLP` whose analytic kernels these are.
        inputs: (N, d) the distinct inputs Y.
        cache_bytes: keep both kernels on the device when 2 N^2 float64 fit in
            this many bytes (None: `default_cache_bytes`; 0: never).
        devices: devices to spread row blocks over (default: `jax.local_devices()`).

    Attributes:
        spec: the `ProductSpec`; state: the arrays ({"y"}, plus "theta" and "k" when cached).
    """

    @x64
    def __init__(self, kernels, inputs, cache_bytes: int | None = None, devices=None):
        if not isinstance(kernels, MLP):
            raise TypeError(
                "the matrix-free route needs an MLP's analytic kernels (a traceable recursion); "
                f"got {type(kernels).__name__}: use solver='dense' for other kernel functions"
            )
        inputs = np.asarray(inputs, np.float64)
        n = inputs.shape[0]
        limit = default_cache_bytes() if cache_bytes is None else int(cache_bytes)
        self.spec = ProductSpec(
            kernel=tuple(sorted(kernels._static().items())),
            cached=2 * 8 * n * n <= limit,
            block_rows=int(max(1, min(n, BLOCK_ROWS, BLOCK_ENTRIES // max(n, 1)))),
            devices=tuple(jax.local_devices() if devices is None else devices),
        )
        self.state = {"y": jnp.asarray(inputs)}
        if self.spec.cached:
            k, theta = _cache(self.spec, self.state["y"])
            self.state = {"y": self.state["y"], "k": k, "theta": theta}

    @property
    def cached(self) -> bool:
        return self.spec.cached

    @x64
    def __call__(self, v, w=None):
        """``(Theta_YY v, K_YY w)`` for v (N, s) and w (N, s') (None: no NNGP product)."""
        return kernel_products(self.spec, self.state, *_pair_of(v, w, self.state["y"].shape[0]))

    @x64
    def test(self, x_test, v, w=None):
        """``(Theta_*Y v, K_*Y w)`` for test inputs (m, d), v (N, s), w (N, s') (None: no
        NNGP product): (m, s) and (m, s')."""
        return _stream(self.spec, jnp.asarray(x_test, jnp.float64), self.state["y"],
                       *_pair_of(v, w, self.state["y"].shape[0]))  # fmt: skip

    def pair(self, x1, x2):
        """``(K, Theta)`` between x1 (r, d) and x2 (c, d): traceable."""
        return _kernel_recursion(x1, x2, **dict(self.spec.kernel))


def _pair_of(v, w, n: int):
    """(v, w) as float64 arrays, w (n, 0) when None (no NNGP product)."""
    v = jnp.asarray(v, jnp.float64)
    return v, jnp.zeros((n, 0)) if w is None else jnp.asarray(w, jnp.float64)


def kernel_products(spec: ProductSpec, state: dict, v, w, support=None):
    """``(Theta_YY v, K_YY w)``, (N, s) and (N, s'): pure in (state, v, w), traceable.

    ``support`` (c,) indexes the rows where v and w may be non-zero (the products then
    stream only those columns of the kernels); None: all."""
    if spec.cached:
        return state["theta"] @ v, state["k"] @ w
    y = state["y"]
    if support is None:
        return _stream(spec, y, y, v, w)
    return _stream(spec, y, y[support], v[support], w[support])


def _cache(spec: ProductSpec, y):
    """(K, Theta) (N, N) of y, written in place block by block (donated buffers), so the
    peak is the two kernels and one block, not twice the kernels (as concatenating is)."""
    n = y.shape[0]
    rows = max(1, min(n, 4 * BLOCK_ENTRIES // n))
    k, theta = jnp.zeros((n, n), y.dtype), jnp.zeros((n, n), y.dtype)
    for start in range(0, n, rows):  # the last block overlaps the one before: same values
        k, theta = _fill_rows(spec, rows, k, theta, y, min(start, n - rows))
    return k, theta


@functools.partial(jax.jit, static_argnames=("spec", "rows"), donate_argnums=(2, 3))
def _fill_rows(spec: ProductSpec, rows: int, k, theta, y, start):
    kb, tb = _kernel_recursion(jax.lax.dynamic_slice_in_dim(y, start, rows), y, **dict(spec.kernel))
    return (jax.lax.dynamic_update_slice_in_dim(k, kb, start, 0),
            jax.lax.dynamic_update_slice_in_dim(theta, tb, start, 0))  # fmt: skip


def backend_jit(fn, static_argnames=()):
    """``jax.jit(fn)``, with 512-bit vectors on a CPU backend (the kernel loop runs ~1.5x
    faster, measured); called inside another trace, `fn` is traced inline (compiler
    options belong to the top-level jit)."""
    cpu = jax.jit(fn, static_argnames=static_argnames,
                  compiler_options={"xla_cpu_prefer_vector_width": 512})  # fmt: skip
    other = jax.jit(fn, static_argnames=static_argnames)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((args, kwargs))):
            return fn(*args, **kwargs)
        return (cpu if jax.default_backend() == "cpu" else other)(*args, **kwargs)

    return run


def _stream_impl(spec: ProductSpec, x, y, v, w):
    """``(Theta(x, y) v, K(x, y) w)`` (m, s), (m, s') without forming (m, N): row blocks
    of x, spread over the devices."""
    b, m, n_dev = spec.block_rows, x.shape[0], len(spec.devices)
    blocks = _ceil_div(_ceil_div(m, b), n_dev) * n_dev
    padded = jnp.zeros((blocks * b, x.shape[1]), x.dtype).at[:m].set(x)
    theta_v, k_w = _streamer(spec)(padded.reshape(blocks, b, -1), y, v, w)
    rows = blocks * b
    return theta_v.reshape(rows, v.shape[1])[:m], k_w.reshape(rows, w.shape[1])[:m]


_stream = backend_jit(_stream_impl, static_argnames=("spec",))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=16)
def _streamer(spec: ProductSpec):
    """(blocks (B, b, d), y (N, d), v (N, s), w (N, s')) -> (Theta v (B, b, s), K w (B, b, s'))."""
    static = dict(spec.kernel)

    def local(blocks, y, v, w):
        def one(block):  # K + 1j Theta (b, N) in one pass, then two real products
            z = _pair(block, y, **static)
            return jnp.imag(z) @ v, jnp.real(z) @ w

        return jax.lax.map(one, blocks)

    if len(spec.devices) == 1:
        return local
    mesh = Mesh(np.array(spec.devices), ("rows",))
    sharded = jax.shard_map(
        local, mesh=mesh, in_specs=(P("rows"), P(), P(), P()), out_specs=P("rows"), check_vma=False
    )

    def run(blocks, y, v, w):
        blocks = jax.lax.with_sharding_constraint(blocks, NamedSharding(mesh, P("rows")))
        return sharded(blocks, y, v, w)

    return run
