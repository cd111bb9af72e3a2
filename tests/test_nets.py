"""Analytic infinite-width kernels against Monte Carlo over finite networks (issue 3, point 1).

The same `MLP` object builds the finite networks; the empirical NNGP is the
mean over initialisations of output products f(x) f(x'), the empirical NTK
the mean of Jacobian products J(x) J(x')^T (over all omega, beta).

Tolerance: |analytic - MC mean| <= 5 SE + 3 max|K| / width, entrywise, where
SE is the Monte Carlo standard error of the mean over initialisations (so a
correct kernel fails with probability ~1e-6 per entry) and the second term
allows for the O(1/width) finite-width corrections of depth >= 2 networks
(the expectations are exact at depth 1, where that term is zero).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import tdntk

INPUTS = np.array(
    [
        [1.0, 0.5, -0.3],
        [-1.0, -0.5, 0.3],  # antiparallel to the first: arccos at pi
        [2.0, 1.0, -0.6],  # parallel to the first: arccos at 0
        [0.0, 0.0, 0.0],  # zero input: only the bias reaches the first layer
        [0.3, -1.2, 0.8],
    ]
)
WIDTH = 1024
INITS = 48


def monte_carlo_kernels(net, x, inits, seed=0):
    """Per-initialisation samples of f f^T and J J^T: two (inits, n, n) arrays."""
    x = jnp.asarray(x, jnp.float32)

    def sample(key):
        params = net.init(key, x.shape[1])
        flat, unravel = ravel_pytree(params)
        jac = jax.jacrev(lambda p: net.apply(unravel(p), x))(flat)  # (n, P)
        f = net.apply(params, x)
        return jnp.outer(f, f), jac @ jac.T

    keys = jax.random.split(jax.random.PRNGKey(seed), inits)
    nngp, ntk = jax.lax.map(jax.jit(sample), keys)
    return np.asarray(nngp, np.float64), np.asarray(ntk, np.float64)


@pytest.mark.parametrize("activation", ["relu", "erf"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_analytic_kernels_match_monte_carlo(activation, depth):
    net = tdntk.MLP(depth, WIDTH, activation, weight_var=1.6, bias_var=0.2)
    analytic_nngp, analytic_ntk = net.kernels(INPUTS)
    mc_nngp, mc_ntk = monte_carlo_kernels(net, INPUTS, INITS)
    for analytic, samples in ((analytic_nngp, mc_nngp), (analytic_ntk, mc_ntk)):
        mean = samples.mean(axis=0)
        se = samples.std(axis=0, ddof=1) / np.sqrt(INITS)
        bias = 0.0 if depth == 1 else 3 * np.abs(analytic).max() / WIDTH
        assert np.all(np.abs(analytic - mean) <= 5 * se + bias + 1e-6), np.abs(analytic - mean) / (
            se + 1e-12
        )


def test_identity_activation_is_exact_linear_kernel():
    """With phi = identity the kernels are polynomials in x.x' (closed form by hand)."""
    sw2, sb2 = 1.3, 0.4
    net = tdntk.MLP(2, 8, "identity", weight_var=sw2, bias_var=sb2)
    x = INPUTS
    k1 = sw2 * x @ x.T / x.shape[1] + sb2
    k2 = sw2 * k1 + sb2
    k3 = sw2 * k2 + sb2
    theta3 = k3 + sw2 * (k2 + sw2 * k1)
    nngp, ntk = net.kernels(x)
    np.testing.assert_allclose(nngp, k3, rtol=1e-14)
    np.testing.assert_allclose(ntk, theta3, rtol=1e-14)


@pytest.mark.parametrize("activation", ["relu", "erf", "identity"])
def test_kernels_blocks_diagonals_and_symmetry(activation):
    net = tdntk.MLP(3, 16, activation)
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(2100, 4)), rng.normal(size=(7, 4))  # > one row block
    nngp, ntk = net.kernels(x1, x2)
    assert nngp.shape == ntk.shape == (2100, 7) and nngp.dtype == np.float64
    swapped = net.kernels(x2, x1)
    np.testing.assert_allclose(nngp, swapped[0].T, rtol=1e-12)
    np.testing.assert_allclose(ntk, swapped[1].T, rtol=1e-12)
    full = net.kernels(x1[:50])
    diag = net.kernel_diagonals(x1[:50])
    # arccos(k12 / norm) near 1 amplifies round-off to ~sqrt(eps) = 1e-8 on the diagonal
    np.testing.assert_allclose(np.diag(full[0]), diag[0], rtol=1e-7)
    np.testing.assert_allclose(np.diag(full[1]), diag[1], rtol=1e-7)
    assert np.linalg.eigvalsh(full[1]).min() > -1e-10


def test_finite_network_shapes_and_parametrisation():
    net = tdntk.MLP(2, 32, "relu", weight_var=2.0, bias_var=0.5)
    params = net.init(jax.random.PRNGKey(0), 3)
    assert [p["w"].shape for p in params] == [(3, 32), (32, 32), (32, 1)]
    assert net.apply(params, jnp.ones((7, 3))).shape == (7,)
    # NTK parametrisation (eq. 4): a depth-0 network is sw/sqrt(d) x.omega + sb beta
    lin = tdntk.MLP(0, 1, "relu", weight_var=2.0, bias_var=0.5)
    p = lin.init(jax.random.PRNGKey(1), 3)
    x = jnp.array([[1.0, 2.0, 3.0]])
    expected = np.sqrt(2.0 / 3) * (x @ p[0]["w"])[0, 0] + np.sqrt(0.5) * p[0]["b"][0]
    np.testing.assert_allclose(lin.apply(p, x)[0], expected, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(depth=-1), "depth"),
        (dict(width=0), "width"),
        (dict(activation="tanh"), "activation"),
        (dict(weight_var=-1.0), "weight_var"),
        (dict(bias_var=float("nan")), "bias_var"),
    ],
)
def test_bad_architecture_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tdntk.MLP(**kwargs)


def test_bad_kernel_inputs():
    net = tdntk.MLP()
    with pytest.raises(ValueError, match="x1"):
        net.kernels(np.ones(3))
    with pytest.raises(ValueError, match="x2"):
        net.kernels(np.ones((2, 3)), np.array([[np.nan, 0, 0]]))
    with pytest.raises(ValueError, match="features"):
        net.kernels(np.ones((2, 3)), np.ones((2, 4)))
