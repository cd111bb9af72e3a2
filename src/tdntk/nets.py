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

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MLP", "ACTIVATIONS"]

ACTIVATIONS = ("relu", "erf", "identity")

# Rows of x1 per block in `MLP.kernels`: bounds memory to a few arrays of
# (block, n2) float64 values per layer.
_KERNEL_BLOCK_ROWS = 1024


def _dual_relu(k11, k22, k12):
    """E[relu(u) relu(v)] and E[relu'(u) relu'(v)] for (u, v) ~ N(0, [[k11, k12], [k12, k22]]).

    The arc-cosine kernels of degree 1 and 0 (Cho & Saul 2009).
    """
    norm = np.sqrt(k11 * k22)
    cos = np.clip(k12 / np.maximum(norm, np.finfo(np.float64).tiny), -1.0, 1.0)
    angle = np.arccos(cos)
    e_phi = norm * (np.sin(angle) + (np.pi - angle) * cos) / (2 * np.pi)
    e_dphi = (np.pi - angle) / (2 * np.pi)
    return e_phi, e_dphi


def _dual_erf(k11, k22, k12):
    """E[erf(u) erf(v)] and E[erf'(u) erf'(v)] (arcsine kernel, Williams 1997)."""
    det = (1 + 2 * k11) * (1 + 2 * k22)
    e_phi = (2 / np.pi) * np.arcsin(np.clip(2 * k12 / np.sqrt(det), -1.0, 1.0))
    e_dphi = (4 / np.pi) / np.sqrt(det - 4 * k12**2)
    return e_phi, e_dphi


def _dual_identity(k11, k22, k12):
    return k12, np.ones_like(k12)


_DUALS = {"relu": _dual_relu, "erf": _dual_erf, "identity": _dual_identity}
_PHIS = {"relu": jax.nn.relu, "erf": jax.scipy.special.erf, "identity": lambda z: z}


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

    depth: int = 2
    width: int = 1024
    activation: str = "relu"
    weight_var: float = 1.0
    bias_var: float = 0.1

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

        Layer recursion (Lee et al. 2019, app. C, NTK parametrisation):
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
        diag2 = self._diagonal_nngp_layers(x2)
        nngp = np.empty((x1.shape[0], x2.shape[0]))
        ntk = np.empty_like(nngp)
        for start in range(0, x1.shape[0], _KERNEL_BLOCK_ROWS):
            rows = slice(start, start + _KERNEL_BLOCK_ROWS)
            diag1 = self._diagonal_nngp_layers(x1[rows])
            nngp[rows], ntk[rows] = self._recursion(x1[rows] @ x2.T, diag1, diag2, x1.shape[1])
        return nngp, ntk

    def kernel_diagonals(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Diagonals of `kernels(x, x)` without forming the (n, n) matrices: (n,), (n,)."""
        x = self._check_inputs(x, "x")
        d = x.shape[1]
        k = self.weight_var * np.einsum("ij,ij->i", x, x) / d + self.bias_var
        theta = k
        dual = _DUALS[self.activation]
        for _ in range(self.depth):
            e_phi, e_dphi = dual(k, k, k)
            k_next = self.weight_var * e_phi + self.bias_var
            theta = k_next + self.weight_var * e_dphi * theta
            k = k_next
        return k, theta

    def _diagonal_nngp_layers(self, x) -> list[np.ndarray]:
        """K^l(x, x) for l = 1..depth (the inputs to each nonlinearity): list of (n,)."""
        d = x.shape[1]
        k = self.weight_var * np.einsum("ij,ij->i", x, x) / d + self.bias_var
        out = [k]
        dual = _DUALS[self.activation]
        for _ in range(self.depth - 1):
            e_phi, _ = dual(k, k, k)
            k = self.weight_var * e_phi + self.bias_var
            out.append(k)
        return out

    def _recursion(self, dot, diag1, diag2, d):
        dual = _DUALS[self.activation]
        k = self.weight_var * dot / d + self.bias_var
        theta = k
        for layer in range(self.depth):
            e_phi, e_dphi = dual(diag1[layer][:, None], diag2[layer][None, :], k)
            k_next = self.weight_var * e_phi + self.bias_var
            theta = k_next + self.weight_var * e_dphi * theta
            k = k_next
        return k, theta

    @staticmethod
    def _check_inputs(x, name):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"kernels: {name} must have shape (n, d), got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"kernels: {name} contains NaN or infinite values")
        return x
