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

from fractions import Fraction
from math import comb

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy import special

import tdntk
from tdntk import nets

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


# ---------------------------------------------------------------------- float64 accuracy
# `tdntk.nets` computes arccos / arcsin from its own polynomial and fuses the recursion
# into one pass (see the notes there); these tests hold it to float64 accuracy against
# straightforward formulas.
def economised_arcsin_coefficients(degree=12, zmax=Fraction(1, 4), terms=120):
    """P with arcsin(y) = y + y z P(z), z = y^2 in [0, zmax], by Chebyshev economisation
    of the Taylor series, in exact rational arithmetic; coefficients rounded once."""
    # (arcsin(sqrt z) / sqrt z - 1) / z = sum_{n >= 1} C(2n, n) / (4^n (2n + 1)) z^(n - 1)
    taylor = [Fraction(comb(2 * n, n), 4**n * (2 * n + 1)) for n in range(1, terms + 1)]
    half = zmax / 2  # z = half (1 + t), t in [-1, 1]
    in_t = [Fraction(0)] * terms
    for n, c in enumerate(taylor):
        for k in range(n + 1):
            in_t[k] += c * half**n * comb(n, k)
    # t^n in Chebyshev polynomials, by t T_k = (T_(k+1) + T_|k-1|) / 2
    cheb = [Fraction(0)] * (terms + 1)
    power = [Fraction(1)]
    for c in in_t:
        for k, v in enumerate(power):
            cheb[k] += c * v
        nxt = [Fraction(0)] * (len(power) + 1)
        for k, v in enumerate(power):
            nxt[k + 1] += v if k == 0 else v / 2
            if k:
                nxt[k - 1] += v / 2
        power = nxt
    dropped = sum(abs(c) for c in cheb[degree + 1 :])
    t_polys = [[Fraction(1)], [Fraction(0), Fraction(1)]]  # T_k in powers of t
    while len(t_polys) <= degree:
        a, b = t_polys[-1], t_polys[-2]
        t_polys.append([2 * (a[i - 1] if i else 0) - (b[i] if i < len(b) else 0)
                        for i in range(len(a) + 1)])  # fmt: skip
    in_t = [sum(cheb[k] * t_polys[k][i] for k in range(i, degree + 1)) for i in range(degree + 1)]
    in_z = [Fraction(0)] * (degree + 1)  # t = z / half - 1
    for i, c in enumerate(in_t):
        for k in range(i + 1):
            in_z[k] += c * comb(i, k) * (1 / half) ** k * (-1) ** (i - k)
    return tuple(float(c) for c in in_z), float(dropped)


def test_arcsin_coefficients_are_the_economised_series():
    coeffs, dropped = economised_arcsin_coefficients()
    assert coeffs == nets._ASIN_COEFFS
    assert dropped < 2e-17  # truncation, against P >= 1/6 and y z P <= arcsin(y) / 20


def _grid_in_unit_interval():
    """[-1, 1]: a dense grid, random points, every ulp next to the branch points +-1/2 and
    the ends, and points approaching +-1 geometrically down to 1e-17."""
    rng = np.random.default_rng(0)
    near = 1 - np.logspace(-17, 0, 20_001)
    edges = [np.nextafter(v, np.inf if i % 2 else -np.inf) for v in (0.5, 1.0) for i in range(2)]
    c = np.concatenate([np.linspace(-1, 1, 400_001), rng.uniform(-1, 1, 400_000), near, edges,
                        [0.0, 0.5, 1.0, 0.7071067811865476]])  # fmt: skip
    c = np.clip(c, -1, 1)
    return np.concatenate([c, -c])


def _ulps(value, reference):
    return np.abs(value - reference) / np.spacing(np.abs(reference))


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="needs extended precision")
def test_arccos_and_arcsin_match_numpy_to_an_ulp():
    """Measured on this grid: arccos(-c) within 1 ulp of numpy.arccos, arcsin within 2 ulp of
    numpy.arcsin (just above 1/2, where pi/2 - 2 arcsin(sqrt((1 - a) / 2)) doubles the
    rounding of the square root), sqrt(1 - c^2) within 2e-16 of the extended-precision
    value."""
    c = _grid_in_unit_interval()
    with jax.enable_x64(True):
        psi, w = (np.asarray(v) for v in jax.jit(nets._arccos_neg)(c))
        asin, w2 = (np.asarray(v) for v in jax.jit(nets._arcsin)(c))
    assert _ulps(psi, np.arccos(-c)).max() <= 1
    assert _ulps(asin, np.arcsin(c)).max() <= 2
    assert psi[c == 1].min() == np.pi and psi[c == -1].max() == 0
    assert asin[c == 1].min() == np.pi / 2
    cl = c.astype(np.longdouble)
    w_ref = np.sqrt((1 - cl) * (1 + cl))
    for v in (w, w2):
        assert float(np.max(np.abs(v - w_ref) / np.where(w_ref > 0, w_ref, 1))) < 2e-16
        assert np.all(v[np.abs(c) == 1] == 0)


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="needs extended precision")
def test_relu_dual_near_parallel_and_antiparallel():
    """E[relu(u) relu(v)] and E[relu'(u) relu'(v)] for unit variances at c -> +-1, where the
    arccos has infinite slope, against the closed form in extended precision at the same c:
    E[relu relu] within 2.5e-16 absolute (~2 ulp of its largest value, 1/2), the NTK factor
    (pi - arccos c) / (2 pi) within 4e-16 relative, also as it goes to 0 at c = -1 (no
    cancellation). Cosines at or above `nets._COS_SNAP` (1 - 2^-48) are taken as 1: the same
    values as at c = 1 exactly."""
    c = _grid_in_unit_interval()
    c = c[np.abs(c) > 0.999]
    with jax.enable_x64(True):
        unit = (np.ones_like(c), np.ones_like(c))  # s = sqrt(k) = 1 and 1 / s
        e_phi, e_dphi = (np.asarray(v) for v in nets._relu_step(c, unit, unit, 1.0, 0.0))
    snapped = c >= nets._COS_SNAP
    assert np.all(e_phi[snapped] == e_phi[c == 1][0]) and np.all(e_dphi[snapped] == 0.5)
    c, e_phi, e_dphi = c[~snapped], e_phi[~snapped], e_dphi[~snapped]
    cl = c.astype(np.longdouble)
    psi = np.where(cl < 0, np.arccos(-cl), np.pi - np.arccos(cl))  # no cancellation either
    ref_phi = (np.sqrt((1 - cl) * (1 + cl)) + psi * cl) / (2 * np.pi)
    ref_dphi = psi / (2 * np.pi)
    assert float(np.max(np.abs(e_phi - ref_phi))) < 2.5e-16
    rel = np.abs(e_dphi - ref_dphi) / np.where(ref_dphi > 0, ref_dphi, 1)
    assert float(rel.max()) < 4e-16
    assert np.all(e_dphi[c == -1] == 0) and np.all(e_phi[c == -1] == 0)


def reference_kernels(x, activation, depth, sw2, sb2):
    """NNGP and NTK of the points x with themselves by the layer recursion as printed (the
    closed-form duals with numpy's arccos / arcsin), in extended precision (np.longdouble),
    with the Gram matrix's diagonal set to the squared norms (exact cosine 1 there)."""
    x = np.asarray(x, np.longdouble)
    d = x.shape[1]
    k = sw2 * (x @ x.T) / d + sb2
    np.fill_diagonal(k, sw2 * np.sum(x * x, axis=1) / d + sb2)
    theta = k
    pi = np.longdouble(np.pi)  # the float64 pi, as in the implementation
    for _ in range(depth):
        k11 = np.diag(k)[:, None]
        if activation == "relu":
            norm = np.sqrt(k11 * k11.T)
            cos = np.clip(k / norm, -1, 1)
            angle = np.arccos(cos)
            e_phi = norm * (np.sqrt(1 - cos**2) + (pi - angle) * cos) / (2 * pi)
            e_dphi = (pi - angle) / (2 * pi)
        elif activation == "erf":
            det = (1 + 2 * k11) * (1 + 2 * k11.T)
            e_phi = (2 / pi) * np.arcsin(2 * k / np.sqrt(det))
            e_dphi = (4 / pi) / np.sqrt(det - 4 * k**2)
        else:
            e_phi, e_dphi = k, 1
        k = sw2 * e_phi + sb2
        theta = k + sw2 * e_dphi * theta
    return k.astype(np.float64), theta.astype(np.float64)


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="needs extended precision")
@pytest.mark.parametrize("activation", ["relu", "erf", "identity"])
@pytest.mark.parametrize("width", [6, 40])  # dot product fused in the loop / matrix product
def test_kernels_match_the_recursion_in_extended_precision(activation, width):
    """Typical inputs (standard normal, and INPUTS: parallel, antiparallel, zero), the kernel
    of a set with itself (diagonal included) and of two sets, depth 3: within 1e-13 of
    sqrt(K_ii K_jj) at every entry, and for relu (entries >= sb2 > 0) 1e-13 relative.
    Measured: <= 2.2e-15 of sqrt(K_ii K_jj), relu <= 1.1e-15 relative."""
    rng = np.random.default_rng(1)
    special = np.tile(INPUTS, (1, -(-width // 3)))[:, :width]
    x = np.vstack([rng.normal(size=(300, width)), special, 1.5 * rng.normal(size=(200, width))])
    net = tdntk.MLP(3, 8, activation, weight_var=SW2, bias_var=SB2)
    reference = reference_kernels(x, activation, 3, SW2, SB2)
    first, second = slice(0, 305), slice(305, None)
    pairs = zip(net.kernels(x[first]), net.kernels(x[first], x[second]), reference, strict=True)
    for mine, cross, ref in pairs:
        diag = np.sqrt(np.diag(ref))
        for value, rows, cols in ((mine, first, first), (cross, first, second)):
            err = np.abs(value - ref[rows, cols])
            assert float(np.max(err / np.outer(diag[rows], diag[cols]))) < 1e-13
            if activation == "relu":
                assert float(np.max(err / ref[rows, cols])) < 1e-13


@pytest.mark.parametrize("activation", ["relu", "erf", "identity"])
def test_blocks_padding_and_mirroring_change_nothing(activation, monkeypatch):
    """`kernels` and `device_kernels` with small blocks (padded edges, several column blocks,
    the kernel of a set with itself mirrored from above the diagonal) against one block."""
    net = tdntk.MLP(2, 8, activation)
    rng = np.random.default_rng(2)
    x1, x2 = rng.normal(size=(70, 4)), rng.normal(size=(101, 4))
    whole = [net.kernels(x1, x2), net.kernels(x1), net.device_kernels(x1, x2)]
    monkeypatch.setattr(nets, "_KERNEL_BLOCK_ROWS", 24)
    monkeypatch.setattr(nets, "_KERNEL_BLOCK_COLS", 40)
    blocked = [net.kernels(x1, x2), net.kernels(x1), net.device_kernels(x1, x2)]
    for a, b in zip(whole, blocked, strict=True):
        for u, v in zip(a, b, strict=True):
            np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=1e-15, atol=0)
    for u in blocked[1]:
        np.testing.assert_array_equal(u, u.T)
    same = net.kernels(x1, x1.copy())  # an equal x2 takes the mirrored route too
    np.testing.assert_array_equal(same[1], blocked[1][1])


def test_kernel_recursion_is_a_traceable_function_of_its_arrays():
    """`_kernel_recursion` inside jit + lax.map over row blocks (a matrix-free solver's
    kernel-vector products) gives `kernels`' values; empty blocks have the right shape."""
    net = tdntk.MLP(2, 8, "relu", weight_var=SW2, bias_var=SB2)
    rng = np.random.default_rng(3)
    x, v = rng.normal(size=(96, 5)), rng.normal(size=96)
    static = net._static()
    with jax.enable_x64(True):
        products = jax.jit(lambda xs, v: jax.lax.map(
            lambda rows: [m @ v for m in nets._kernel_recursion(rows, xs, **static)],
            xs.reshape(3, 32, 5)))(jnp.asarray(x), jnp.asarray(v))  # fmt: skip
        empty = nets._kernel_recursion(jnp.zeros((0, 5)), jnp.asarray(x), **static)
    nngp, ntk = net.kernels(x)
    np.testing.assert_allclose(np.asarray(products[0]).ravel(), nngp @ v, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(products[1]).ravel(), ntk @ v, rtol=1e-12)
    assert empty[0].shape == empty[1].shape == (0, 96)


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
    # identical inputs get cosine exactly 1 (`nets._COS_SNAP`): no arccos round-off there
    np.testing.assert_allclose(np.diag(full[0]), diag[0], rtol=1e-14)
    np.testing.assert_allclose(np.diag(full[1]), diag[1], rtol=1e-14)
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
