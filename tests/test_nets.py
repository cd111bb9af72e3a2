"""Analytic infinite-width kernels against two independent routes (issue 3, point 1).

1. Numerical quadrature (`test_kernels_match_numerical_quadrature_of_the_recursion`):
   the layer recursion of `MLP.kernels` with its Gaussian expectations
   E[phi(u) phi(v)] and E[phi'(u) phi'(v)] computed by a 2-D product quadrature
   rule (polar coordinates; Gauss-Laguerre in r^2 / 2, Gauss-Legendre in the
   angle between the kinks of relu), not by the closed-form arc-cosine /
   arcsine formulas of `tdntk.nets`.
2. Monte Carlo over finite networks built by the same `MLP` object (`init`,
   `apply`), which also checks the NTK parametrisation of the finite network:
   * NNGP, depth 1: the mean of f(x) f(x') over 2^17 forward passes. At depth 1
     E[f f'] = sw2 E[phi(u) phi(v)] + sb2 exactly at any width, so only
     sampling error remains.
   * NNGP, depth >= 2: the mean over 4096 initialisations of
     E[f f' | hidden layers] = J_L J_L^T, J_L the Jacobian of the output with
     respect to the readout layer (omega, beta) (the readout is integrated out
     exactly, which removes most of the sampling variance); a finite-width
     output covariance differs from the NNGP by O(1/width).
   * NTK: the mean of J J^T (all omega, beta) over 48 initialisations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy import special

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
SW2, SB2 = 1.6, 0.2
WIDTH = 1024  # NTK Monte Carlo
INITS = 48
FORWARD_PASSES = 2**17  # NNGP Monte Carlo, depth 1 (exact at any width)
FORWARD_WIDTH = 64
READOUT_INITS = 4096  # NNGP Monte Carlo, depth >= 2 (readout integrated out)
READOUT_WIDTH = 128


# ---------------------------------------------------------------------- quadrature
_PHI = {
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(np.float64)),
    "erf": (special.erf, lambda z: 2 / np.sqrt(np.pi) * np.exp(-(z**2))),
    "identity": (lambda z: z, np.ones_like),
}
_RADIAL = special.roots_laguerre(100)  # nodes s = r^2 / 2, weights of e^-s
_ANGULAR = np.polynomial.legendre.leggauss(64)


def gaussian_expectation(f, g, k11, k22, k12):
    """E[f(u) g(v)] for (u, v) ~ N(0, [[k11, k12], [k12, k22]]) by numerical quadrature.

    (u, v) = L z with L the Cholesky factor and z = r (cos a, sin a) standard
    normal: E = 1 / (2 pi) int_0^2pi da int_0^inf e^-s F(r(s), a) ds with
    s = r^2 / 2, by Gauss-Laguerre in s (100 nodes) and Gauss-Legendre in a
    (64 nodes) on each arc between the angles where u = 0 or v = 0, so that the
    kinks of relu and the jumps of its derivative fall on arc ends. Each piece
    is then smooth: polynomial in s for relu and identity, analytic in s for erf.
    """
    s, w_s = _RADIAL
    r = np.sqrt(2 * s)
    l11 = np.sqrt(k11)
    l21 = k12 / l11
    l22 = np.sqrt(max(k22 - l21**2, 0.0))
    # u = l11 r cos a vanishes at a = pi/2, 3pi/2; v = r (l21 cos a + l22 sin a) at psi +- pi/2
    psi = np.arctan2(l22, l21)
    cuts = [0.0, np.pi / 2, 3 * np.pi / 2, 2 * np.pi]
    cuts += [(psi + np.pi / 2) % (2 * np.pi), (psi - np.pi / 2) % (2 * np.pi)]
    cuts = np.unique(cuts)
    total = 0.0
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        a = 0.5 * (hi - lo) * _ANGULAR[0] + 0.5 * (hi + lo)
        w_a = 0.5 * (hi - lo) * _ANGULAR[1]
        z1, z2 = r[:, None] * np.cos(a), r[:, None] * np.sin(a)
        u, v = l11 * z1, l21 * z1 + l22 * z2
        total += np.sum(w_s[:, None] * w_a * f(u) * g(v))
    return total / (2 * np.pi)


def quadrature_kernels(x, activation, depth, sw2, sb2):
    """[(K^l, Theta^l) for l = 1..depth] of the layer recursion (Lee et al. 2019, app. C),
    every expectation by `gaussian_expectation`."""
    phi, dphi = _PHI[activation]
    k = sw2 * x @ x.T / x.shape[1] + sb2
    theta = k
    out = []
    n = len(x)
    for _ in range(depth):
        e_phi, e_dphi = np.empty((n, n)), np.empty((n, n))
        for i in range(n):
            for j in range(i, n):
                args = (k[i, i], k[j, j], k[i, j])
                e_phi[i, j] = e_phi[j, i] = gaussian_expectation(phi, phi, *args)
                e_dphi[i, j] = e_dphi[j, i] = gaussian_expectation(dphi, dphi, *args)
        k = sw2 * e_phi + sb2
        theta = k + sw2 * e_dphi * theta
        out.append((k, theta))
    return out


def test_gaussian_expectation_quadrature_is_exact_on_known_moments():
    """The rule itself, on expectations known without any kernel formula."""
    k11, k22, k12 = 1.7, 0.6, -0.4
    one = np.ones_like
    np.testing.assert_allclose(gaussian_expectation(one, one, k11, k22, k12), 1.0, rtol=1e-13)
    moment = gaussian_expectation(lambda u: u, lambda v: v, k11, k22, k12)
    np.testing.assert_allclose(moment, k12, rtol=1e-13)
    fourth = gaussian_expectation(lambda u: u**2, lambda v: v**2, k11, k22, k12)
    np.testing.assert_allclose(fourth, k11 * k22 + 2 * k12**2, rtol=1e-13)  # Isserlis
    # P(u > 0, v > 0) for correlation rho is 1/4 + arcsin(rho) / (2 pi) (Sheppard)
    rho = k12 / np.sqrt(k11 * k22)
    step = _PHI["relu"][1]
    np.testing.assert_allclose(
        gaussian_expectation(step, step, k11, k22, k12), 0.25 + np.arcsin(rho) / (2 * np.pi),
        rtol=1e-13,
    )  # fmt: skip


@pytest.mark.parametrize("activation", ["relu", "erf", "identity"])
def test_kernels_match_numerical_quadrature_of_the_recursion(activation):
    """Every layer l = 1, 2, 3: NNGP and NTK against the quadrature recursion.

    Tolerance: rtol 1e-7. The quadrature is accurate to ~1e-14 (relu, identity)
    and ~1e-12 (erf); the rest is the analytic side's round-off: arccos(k12 /
    norm) at cos -> 1 (the parallel inputs) amplifies float64 round-off to ~4e-9
    relative in relu's NTK (measured). A kernel off by 5 % fails by 5 orders of
    magnitude.
    """
    for depth, (k, theta) in enumerate(
        quadrature_kernels(INPUTS, activation, 3, SW2, SB2), start=1
    ):
        nngp, ntk = tdntk.MLP(depth, 8, activation, SW2, SB2).kernels(INPUTS)
        np.testing.assert_allclose(nngp, k, rtol=1e-7, err_msg=f"NNGP, depth {depth}")
        np.testing.assert_allclose(ntk, theta, rtol=1e-7, err_msg=f"NTK, depth {depth}")


# ---------------------------------------------------------------------- Monte Carlo
def _batched_samples(sample, count, chunk, seed):
    """`sample(key)` for `count` keys, vmapped in chunks (bounded memory): (count, ...) float64."""
    keys = jax.random.split(jax.random.PRNGKey(seed), count)
    batched = jax.jit(jax.vmap(sample))
    return np.concatenate(
        [np.asarray(batched(keys[i : i + chunk]), np.float64) for i in range(0, count, chunk)]
    )


def monte_carlo_nngp(net, x, seed=0):
    """Per-sample estimates of E[f(x) f(x')]: (samples, n, n).

    Depth 1: f f^T of `FORWARD_PASSES` networks. Depth >= 2: J_L J_L^T of
    `READOUT_INITS` networks, J_L = d f / d(readout omega, beta); since f is
    linear in the readout and its omega, beta ~ N(0, 1),
    E[f f^T | hidden layers] = J_L J_L^T.
    """
    x = jnp.asarray(x, jnp.float32)

    def forward(key):
        f = net.apply(net.init(key, x.shape[1]), x)
        return jnp.outer(f, f)

    def readout(key):
        params = net.init(key, x.shape[1])
        jac = jax.jacrev(lambda last: net.apply([*params[:-1], last], x))(params[-1])
        flat = [jnp.reshape(j, (x.shape[0], -1)) for j in jax.tree.leaves(jac)]
        return sum(j @ j.T for j in flat)

    if net.depth == 1:
        return _batched_samples(forward, FORWARD_PASSES, 2**14, seed)
    return _batched_samples(readout, READOUT_INITS, 512, seed)


def monte_carlo_ntk(net, x, inits, seed=0):
    """Per-initialisation samples of J J^T (all omega, beta): (inits, n, n)."""
    x = jnp.asarray(x, jnp.float32)

    def sample(key):
        flat, unravel = ravel_pytree(net.init(key, x.shape[1]))
        jac = jax.jacrev(lambda p: net.apply(unravel(p), x))(flat)  # (n, P)
        return jac @ jac.T

    keys = jax.random.split(jax.random.PRNGKey(seed), inits)
    return np.asarray(jax.lax.map(jax.jit(sample), keys), np.float64)


def _assert_mean_matches(analytic, samples, bias, what):
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / np.sqrt(len(samples))
    excess = np.abs(analytic - mean) - (5 * se + bias)
    assert np.all(excess <= 1e-6), (what, np.abs(analytic - mean) / se, bias / se)


@pytest.mark.parametrize("activation", ["relu", "erf"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_analytic_kernels_match_monte_carlo(activation, depth):
    """Tolerance: |analytic - MC mean| <= 5 SE + bias, entrywise, SE the Monte Carlo standard
    error of the mean (a correct kernel fails with probability ~6e-7 per entry).

    bias: 0 at depth 1 (the expectations are exact at any width); at depth >= 2 the
    O(1/width) finite-width corrections: for the NNGP sqrt(K_ii K_jj) / width, twice the
    largest measured (0.52 sqrt(K_ii K_jj) / width, relu, depth 3, with 2^18
    initialisations at widths 32 and 64), for the NTK 3 max|Theta| / width.

    Resolution of the NNGP relative to sqrt(K_ii K_jj): 5 SE ~ 2 % at depth 1; at depth
    >= 2, 5 SE + bias ~ 2.8-3.1 % (relu), ~ 1.3 % (erf). An NNGP off by 5 % fails (checked by
    hand: scaling `MLP.kernels`' NNGP by 1.05 or 0.95 fails every case); NTK: 5 SE ~ 4 %.
    """
    net = tdntk.MLP(depth, WIDTH, activation, weight_var=SW2, bias_var=SB2)
    analytic_nngp, analytic_ntk = net.kernels(INPUTS)

    narrow = tdntk.MLP(depth, FORWARD_WIDTH if depth == 1 else READOUT_WIDTH, activation,
                       weight_var=SW2, bias_var=SB2)  # fmt: skip
    scale = np.sqrt(np.outer(np.diag(analytic_nngp), np.diag(analytic_nngp)))
    bias = 0.0 if depth == 1 else scale / narrow.width
    _assert_mean_matches(analytic_nngp, monte_carlo_nngp(narrow, INPUTS), bias, "NNGP")

    bias = 0.0 if depth == 1 else 3 * np.abs(analytic_ntk).max() / WIDTH
    _assert_mean_matches(analytic_ntk, monte_carlo_ntk(net, INPUTS, INITS), bias, "NTK")


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
