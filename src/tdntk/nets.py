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

# Rows of x1 per block in `MLP.kernels`: bounds memory to a few arrays of
# (block, n2) float64 values per layer.
_KERNEL_BLOCK_ROWS = 1024


def _dual_relu(k11, k22, k12):
    """E[relu(u) relu(v)] and E[relu'(u) relu'(v)] for (u, v) ~ N(0, [[k11, k12], [k12, k22]]).

    The arc-cosine kernels of degree 1 and 0 (Cho & Saul 2009).
    """
    norm = jnp.sqrt(k11 * k22)
    cos = jnp.clip(k12 / jnp.maximum(norm, np.finfo(np.float64).tiny), -1.0, 1.0)
    angle = jnp.arccos(cos)
    e_phi = norm * (jnp.sqrt(1.0 - cos**2) + (np.pi - angle) * cos) / (2 * np.pi)
    e_dphi = (np.pi - angle) / (2 * np.pi)
    return e_phi, e_dphi


def _dual_erf(k11, k22, k12):
    """E[erf(u) erf(v)] and E[erf'(u) erf'(v)] (arcsine kernel, Williams 1997)."""
    det = (1 + 2 * k11) * (1 + 2 * k22)
    e_phi = (2 / np.pi) * jnp.arcsin(jnp.clip(2 * k12 / jnp.sqrt(det), -1.0, 1.0))
    e_dphi = (4 / np.pi) / jnp.sqrt(det - 4 * k12**2)
    return e_phi, e_dphi


def _dual_identity(k11, k22, k12):
    return k12, jnp.ones_like(k12)


_DUALS = {"relu": _dual_relu, "erf": _dual_erf, "identity": _dual_identity}
_PHIS = {"relu": jax.nn.relu, "erf": jax.scipy.special.erf, "identity": lambda z: z}


@partial(jax.jit, static_argnames=("activation", "depth", "weight_var", "bias_var"))
def _kernel_recursion(x1, x2, activation, depth, weight_var, bias_var):
    """NNGP and NTK (n1, n2) by the layer recursion; call under ``jax.enable_x64``."""
    dual = _DUALS[activation]
    d = x1.shape[1]
    k11 = weight_var * jnp.sum(x1 * x1, axis=1) / d + bias_var
    k22 = weight_var * jnp.sum(x2 * x2, axis=1) / d + bias_var
    k = weight_var * (x1 @ x2.T) / d + bias_var
    theta = k
    for _ in range(depth):
        e_phi, e_dphi = dual(k11[:, None], k22[None, :], k)
        k_next = weight_var * e_phi + bias_var
        theta = k_next + weight_var * e_dphi * theta
        k = k_next
        k11 = weight_var * dual(k11, k11, k11)[0] + bias_var
        k22 = weight_var * dual(k22, k22, k22)[0] + bias_var
    return k, theta


@partial(jax.jit, static_argnames=("activation", "depth", "weight_var", "bias_var"))
def _diagonal_recursion(x, activation, depth, weight_var, bias_var):
    dual = _DUALS[activation]
    k = weight_var * jnp.sum(x * x, axis=1) / x.shape[1] + bias_var
    theta = k
    for _ in range(depth):
        e_phi, e_dphi = dual(k, k, k)
        k_next = weight_var * e_phi + bias_var
        theta = k_next + weight_var * e_dphi * theta
        k = k_next
    return k, theta


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
        nngp = np.empty((x1.shape[0], x2.shape[0]))
        ntk = np.empty_like(nngp)
        with jax.enable_x64(True):
            x2j = jnp.asarray(x2)
            for start in range(0, x1.shape[0], _KERNEL_BLOCK_ROWS):
                rows = slice(start, start + _KERNEL_BLOCK_ROWS)
                k, theta = _kernel_recursion(jnp.asarray(x1[rows]), x2j, **self._static())
                nngp[rows], ntk[rows] = np.asarray(k), np.asarray(theta)
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
            x2j, static = jnp.asarray(x2), self._static()
            blocks = [
                _kernel_recursion(jnp.asarray(x1[s : s + _KERNEL_BLOCK_ROWS]), x2j, **static)
                for s in range(0, x1.shape[0], _KERNEL_BLOCK_ROWS)
            ]
            if len(blocks) == 1:
                return blocks[0]
            return jnp.concatenate([b[0] for b in blocks]), jnp.concatenate([b[1] for b in blocks])

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
