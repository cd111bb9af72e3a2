"""Empirical NTK of one finite network and its linearisation ("Lin." / "Lin. (MC)").

The empirical NTK ``Theta(x, x') = J(x) J(x')^T`` (J = dQ0/dtheta, float64) of
an `MLP` needs no Jacobian: with ``z_l = sw / sqrt(n_in) h_{l-1} omega_l + sb beta_l``
and ``delta_l = dQ/dz_l`` (the backpropagated signal),

    Theta(x, x') = sum_l (sw2 / n_in_l <h_{l-1}, h'_{l-1}> + sb2) <delta_l, delta'_l>,

so it costs one forward/backward pass per input and per-layer Gram products
(`empirical_ntk`, computed in row blocks); `empirical_ntk_jacobian` is the
plain J J^T reference.

A linearised network is the closed form of `tdntk.predict` fed with that
network's own kernels (`EmpiricalKernels`): its outputs Q0 at initialisation
and its empirical NTK, so "kernels in, Z_t out" stays one implementation:

* `linearised_q`: eq. 8/24 (single) or eq. 15/43 (target) at times t;
* `linearised_ensemble`: the same for E initialisations ("Lin. (MC)");
* `parameter_trajectory`: omega_t = theta_t - theta_0 = D^T alpha_t (eq. 8 / 15).

Shapes: n transitions, k next inputs per transition, d features, m test
inputs, T times, E members, P parameters.
"""

from __future__ import annotations

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .data import Transitions
from .dynamics import Schedule, check_times
from .nets import _PHIS, MLP
from .predict import TDNTK

__all__ = [
    "EmpiricalKernels",
    "empirical_ntk",
    "empirical_ntk_jacobian",
    "linearisation",
    "linearised_ensemble",
    "linearised_q",
    "parameter_trajectory",
]

# Rows per block: features are computed and Gram products formed BLOCK rows at a time.
_BLOCK_ROWS = 1024


def _check_x(x, name, d=None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        want = "(n, d)" if d is None else f"(n, {d})"
        raise ValueError(f"{name} must have shape {want}, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_params(net: MLP, params) -> list:
    """One member's parameters in the layout of net.init, as float64 NumPy arrays."""
    if not isinstance(net, MLP):
        raise TypeError(f"net must be an MLP, got {type(net).__name__}")
    ok = isinstance(params, list | tuple) and len(params) == net.depth + 1
    ok = ok and all(
        isinstance(p, dict) and np.ndim(p.get("w")) == 2 and np.ndim(p.get("b")) == 1
        for p in params
    )
    if not ok:
        raise ValueError(
            f"params must be one network's parameters: a list of {net.depth + 1} layers "
            "{'w': (n_in, n_out), 'b': (n_out,)} (for a stacked ensemble use linearised_ensemble)"
        )
    return [
        {"w": np.asarray(p["w"], np.float64), "b": np.asarray(p["b"], np.float64)} for p in params
    ]


# ---------------------------------------------------------------------- layer features
def _forward(net: MLP, params, x, shifts):
    """The network of `MLP.apply` with additive shifts on every pre-activation z_l.

    Returns (q (n,), [h_0 = x, h_1, ..., h_depth]) with h_{l-1} the input of layer l.
    """
    phi = _PHIS[net.activation]
    sw, sb = np.sqrt(net.weight_var), np.sqrt(net.bias_var)
    h, inputs = x, []
    for i, (layer, shift) in enumerate(zip(params, shifts, strict=True)):
        inputs.append(h)
        z = (sw / np.sqrt(layer["w"].shape[0])) * (h @ layer["w"]) + sb * layer["b"] + shift
        h = phi(z) if i < len(params) - 1 else z
    return h[:, 0], inputs


@functools.lru_cache(maxsize=16)
def _features_fn(net: MLP):
    """jit: (params, x (n, d)) -> (q (n,), inputs [h_{l-1}], signals [delta_l = dQ/dz_l])."""

    def features(params, x):
        shifts = [jnp.zeros((x.shape[0], layer["b"].shape[0]), x.dtype) for layer in params]

        def total(s):
            q, inputs = _forward(net, params, x, s)
            return jnp.sum(q), (q, inputs)

        signals, (q, inputs) = jax.grad(total, has_aux=True)(shifts)
        return q, inputs, signals

    return jax.jit(features)


def _layer_features(net: MLP, params64: list, x: np.ndarray):
    """(q (n,), inputs, signals) as float64 NumPy arrays, computed in blocks of rows."""
    fn = _features_fn(net)
    parts = []
    with jax.enable_x64(True):
        p = jax.tree.map(jnp.asarray, params64)
        for start in range(0, max(x.shape[0], 1), _BLOCK_ROWS):
            block = x[start : start + _BLOCK_ROWS]
            q, inputs, signals = fn(p, jnp.asarray(block))
            parts.append(
                (np.asarray(q), [np.asarray(a) for a in inputs], [np.asarray(a) for a in signals])
            )
    q = np.concatenate([part[0] for part in parts])
    inputs = [np.concatenate([part[1][i] for part in parts]) for i in range(len(params64))]
    signals = [np.concatenate([part[2][i] for part in parts]) for i in range(len(params64))]
    return q, inputs, signals


def _gram(net: MLP, f1, f2, rows: slice) -> np.ndarray:
    """Theta(x1[rows], x2) from layer features: (rows, n2), float64."""
    _, in1, sig1 = f1
    _, in2, sig2 = f2
    out = np.zeros((in1[0][rows].shape[0], in2[0].shape[0]))
    for h1, h2, d1, d2 in zip(in1, in2, sig1, sig2, strict=True):
        scale = net.weight_var / h1.shape[1]
        out += (scale * (h1[rows] @ h2.T) + net.bias_var) * (d1[rows] @ d2.T)
    return out


def _ntk_from_features(net, f1, f2) -> np.ndarray:
    n1 = f1[0].shape[0]
    out = np.empty((n1, f2[0].shape[0]))
    for start in range(0, n1, _BLOCK_ROWS):
        rows = slice(start, start + _BLOCK_ROWS)
        out[rows] = _gram(net, f1, f2, rows)
    return out


def empirical_ntk(net: MLP, params, x1, x2=None) -> np.ndarray:
    """Empirical NTK ``J(x1) J(x2)^T`` of one network from its layer structure: (n1, n2) float64.

    Args:
        net: the architecture.
        params: one network's parameters (layout of `MLP.init`).
        x1: (n1, d) inputs.
        x2: (n2, d) inputs; None means x1.
    """
    params64 = _check_params(net, params)
    d = params64[0]["w"].shape[0]
    x1 = _check_x(x1, "x1", d)
    f1 = _layer_features(net, params64, x1)
    f2 = f1 if x2 is None else _layer_features(net, params64, _check_x(x2, "x2", d))
    return _ntk_from_features(net, f1, f2)


@functools.lru_cache(maxsize=16)
def _jacobian_fn(net: MLP):
    def jacobian(params, x):
        jac = jax.jacrev(lambda p: net.apply(p, x))(params)
        return jnp.concatenate([a.reshape(x.shape[0], -1) for a in jax.tree.leaves(jac)], axis=1)

    return jax.jit(jacobian)


def empirical_ntk_jacobian(net: MLP, params, x1, x2=None, block_rows: int = 256) -> np.ndarray:
    """Reference empirical NTK by full Jacobians ``J1 J2^T`` (n1, n2), float64.

    Memory: J2 (n2, P) is held whole and J1 is formed `block_rows` rows at a time.
    """
    params64 = _check_params(net, params)
    d = params64[0]["w"].shape[0]
    x1 = _check_x(x1, "x1", d)
    x2 = x1 if x2 is None else _check_x(x2, "x2", d)
    fn = _jacobian_fn(net)
    with jax.enable_x64(True):
        p = jax.tree.map(jnp.asarray, params64)

        def jac(x):
            blocks = range(0, len(x), block_rows)
            return np.concatenate(
                [np.asarray(fn(p, jnp.asarray(x[s : s + block_rows]))) for s in blocks]
            )

        j2 = jac(x2)
        out = np.empty((x1.shape[0], x2.shape[0]))
        for s in range(0, x1.shape[0], block_rows):
            out[s : s + block_rows] = jac(x1[s : s + block_rows]) @ j2.T
    return out


class EmpiricalKernels:
    """The kernels of one finite network, in the form `TDNTK` takes.

    ``kernels(x1, x2) -> (outer(q0(x1), q0(x2)), empirical NTK)``: the "NNGP"
    slot holds the outer product of the network's outputs at initialisation (the
    second moment of a one-member ensemble), the NTK slot its empirical NTK.
    Layer features of recently seen input arrays are cached, so the closed form's
    repeated calls on the training inputs cost one forward/backward pass.

    Args:
        net: the architecture.
        params: one network's parameters (layout of `MLP.init`).
    """

    def __init__(self, net: MLP, params, cache_size: int = 4):
        self.net = net
        self.params = _check_params(net, params)
        self.input_dim = self.params[0]["w"].shape[0]
        self._cache: dict[str, tuple] = {}
        self._cache_size = cache_size

    def _features(self, x: np.ndarray):
        key = hashlib.sha1(str(x.shape).encode() + x.tobytes()).hexdigest()
        if key not in self._cache:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = _layer_features(self.net, self.params, x)
        return self._cache[key]

    def q0(self, x) -> np.ndarray:
        """Outputs of the network at x (n, d): (n,) float64."""
        return self._features(_check_x(x, "x", self.input_dim))[0]

    def kernels(self, x1, x2=None) -> tuple[np.ndarray, np.ndarray]:
        """(outer(q0(x1), q0(x2)), empirical NTK): both (n1, n2) float64."""
        f1 = self._features(_check_x(x1, "x1", self.input_dim))
        f2 = f1 if x2 is None else self._features(_check_x(x2, "x2", self.input_dim))
        return np.outer(f1[0], f2[0]), _ntk_from_features(self.net, f1, f2)

    __call__ = kernels


# ---------------------------------------------------------------------- linearisations
def linearisation(net: MLP, params, data: Transitions, schedule: Schedule) -> TDNTK:
    """The closed-form core built from one network's empirical kernels (`EmpiricalKernels`).

    Its ``predict_from_init`` with the network's own Q0 is the linearised network
    (eq. 8/24, or eq. 15/43 with a target); see `linearised_q`.
    """
    return _linearise(net, params, data, schedule)[0]


def _linearise(net, params, data, schedule):
    kern = EmpiricalKernels(net, params)
    return TDNTK(kern, data, schedule), kern


def _train_inputs(data: Transitions) -> np.ndarray:
    """[X; X''] (n + n k, d), the same array `TDNTK` builds (so the feature cache hits)."""
    return np.concatenate([data.x, data.x_next_flat])


def _predict(model: TDNTK, kern: EmpiricalKernels, x_eval, t) -> np.ndarray:
    n = model.data.n
    q_train = kern.q0(_train_inputs(model.data))
    return model.predict_from_init(x_eval, t, kern.q0(x_eval), q_train[:n], q_train[n:])


def linearised_q(
    net: MLP,
    params,
    data: Transitions,
    x_eval,
    t,
    schedule: Schedule,
) -> np.ndarray:
    """Q of the linearised network started at `params` after time(s) t: (T, m) float64.

    ``Q_t(X*) = Q0(X*) + Z_t (r - Q0(X) + G P Q0(X''))`` with Z_t from the network's
    empirical NTK: eq. 8/24 (single network) or eq. 15/43 (target network).
    ``Schedule(time="discrete")`` gives gradient descent on the linearised model exactly.

    Args:
        x_eval: (m, d) inputs; t: scalar or (T,) times (steps at the schedule's rate).
    """
    model, kern = _linearise(net, params, data, schedule)
    return _predict(model, kern, x_eval, t)


def _member(params_stacked, i: int) -> list:
    return jax.tree.map(lambda a: np.asarray(a)[i], params_stacked)


def linearised_ensemble(
    net: MLP,
    params_stacked,
    data: Transitions,
    x_eval,
    t,
    schedule: Schedule,
    progress: bool = True,
) -> np.ndarray:
    """`linearised_q` for each of E initialisations ("Lin. (MC)"): (E, T, m) float64.

    Args:
        params_stacked: parameters with a leading (E,) axis on every leaf, e.g.
            `tdntk.training.init_ensemble` or `EnsembleResult.params0`.
    The mean and covariance over axis 0 are the Monte Carlo ensemble moments.
    """
    from tqdm.auto import tqdm

    sizes = {np.shape(a)[0] for a in jax.tree.leaves(params_stacked)}
    if len(sizes) != 1:
        raise ValueError(f"params_stacked leaves must share a leading (E,) axis, got {sizes}")
    members = sizes.pop()
    out = None
    for i in tqdm(range(members), disable=not progress, desc="linearisations", unit="member"):
        q = linearised_q(net, _member(params_stacked, i), data, x_eval, t, schedule)
        out = np.empty((members, *q.shape)) if out is None else out
        out[i] = q
    return out


def parameter_trajectory(
    net: MLP,
    params,
    data: Transitions,
    t,
    schedule: Schedule,
) -> np.ndarray:
    """omega_t = theta_t - theta_0 of the linearised network: (T, P) float64 (eq. 8 / eq. 15).

    ``omega_t = D^T alpha_t`` with alpha_t from `TDDynamics.dual` and
    ``D = U - G P V`` (single network) or ``D = U`` (target network), formed as
    vector-Jacobian products.  Flattened in the order of
    ``jax.flatten_util.ravel_pytree(params)[0]``.
    """
    model, kern = _linearise(net, params, data, schedule)
    times = check_times(t, schedule.time)
    n = data.n
    x_all = _train_inputs(data)
    q_train = kern.q0(x_all)
    rhat = q_train[:n] - data.reward - data.bellman(q_train[n:])
    rhat_c = model.reduced.coords(rhat)
    alphas = np.stack([model.reduced.lift(model.dynamics.dual(ti, rhat_c)) for ti in times])
    gw = data.discount[:, None] * data.next_weights
    with jax.enable_x64(True):
        p64 = jax.tree.map(jnp.asarray, kern.params)

        def drive(p):  # Q(X) - G P Q(X'') (single) or Q(X) (target): (n,)
            q = net.apply(p, jnp.asarray(x_all))
            if schedule.target is not None:
                return q[:n]
            return q[:n] - jnp.sum(jnp.asarray(gw) * q[n:].reshape(gw.shape), axis=1)

        _, pullback = jax.vjp(drive, p64)
        flat = jax.vmap(lambda a: ravel_pytree(pullback(a)[0])[0])(jnp.asarray(alphas))
        return np.asarray(flat, np.float64)
