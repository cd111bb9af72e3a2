"""Empirical NTK and linearisations of one finite network (issue 4, point 2).

References: full Jacobian products J1 J2^T (jax.jacrev), the analytic NTK of
`MLP.kernels`, and gradient descent on the linearised network written here with
`jax.linearize` (nothing of tdntk.empirical or tdntk.dynamics is used by it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_problem
from jax.flatten_util import ravel_pytree
from test_training import dense_gp, normal_params

import tdntk
from tdntk import Schedule, SoftTarget
from tdntk.empirical import (
    EmpiricalKernels,
    empirical_ntk,
    empirical_ntk_jacobian,
    linearised_q,
    parameter_trajectory,
)


def one_member(net, input_dim, seed):
    return jax.tree.map(lambda a: a[0], normal_params(net, input_dim, 1, seed))


@pytest.mark.parametrize("activation,depth", [("relu", 2), ("erf", 1), ("identity", 0)])
def test_empirical_ntk_equals_jacobian_products(activation, depth):
    net = tdntk.MLP(depth=depth, width=16, activation=activation, bias_var=0.2)
    params = one_member(net, 3, seed=1)
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    # float64 throughout: agreement to round-off, 1e-10 relative to the largest entry
    for a, b in ((x1, x2), (x1, None)):
        fast = empirical_ntk(net, params, a, b)
        ref = empirical_ntk_jacobian(net, params, a, b)
        assert fast.dtype == np.float64 and fast.shape == ref.shape
        np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-10 * np.abs(ref).max())
    kern = EmpiricalKernels(net, params)
    with jax.enable_x64(True):
        q_ref = np.asarray(net.apply(jax.tree.map(jnp.asarray, params), jnp.asarray(x1)))
    np.testing.assert_allclose(kern.q0(x1), q_ref, rtol=1e-12, atol=1e-12)
    nngp, ntk = kern.kernels(x1, x2)
    np.testing.assert_allclose(nngp, np.outer(q_ref, kern.q0(x2)), rtol=1e-12)
    np.testing.assert_allclose(ntk, empirical_ntk(net, params, x1, x2), rtol=1e-12)


def test_empirical_ntk_tends_to_analytic_ntk():
    x = np.random.default_rng(2).normal(size=(6, 3))
    _, analytic = tdntk.MLP(depth=2, width=1).kernels(x)
    errors = []
    for width in (16, 256, 4096):
        net = tdntk.MLP(depth=2, width=width)
        rel = [
            np.linalg.norm(empirical_ntk(net, one_member(net, 3, seed), x) - analytic)
            / np.linalg.norm(analytic)
            for seed in range(3)
        ]
        errors.append(np.mean(rel))
    # fluctuations fall like 1/sqrt(width) (a factor 16 here), heavy-tailed over seeds:
    # measured about 0.38, 0.14, 0.07 (mean over 3 seeds); require monotone and a factor 3
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < errors[0] / 3, errors


def linearised_gd(net, params0, data, x_eval, lr, steps, record, tau):
    """GD on the linearised network ``f0 + J (theta - theta0)`` (and its target), float64.

    Returns Q(x_eval) (len(record), m) and omega = theta - theta0 flattened (len(record), P).
    """
    s = jnp.asarray(np.concatenate([data.x, data.x_next_flat, x_eval]))
    n, nk = data.n, data.n * data.k
    f0, jvp = jax.linearize(lambda p: net.apply(p, s), params0)
    gp, r = jnp.asarray(dense_gp(data)), jnp.asarray(data.reward)

    def loss(omega, omega_bar):
        f = f0 + jvp(omega)
        f_next = f if tau is None else jax.lax.stop_gradient(f0 + jvp(omega_bar))
        return 0.5 * jnp.sum((f[:n] - r - gp @ f_next[n : n + nk]) ** 2)

    @jax.jit
    def step(omega, omega_bar):
        g = jax.grad(loss)(omega, omega_bar)
        omega = jax.tree.map(lambda a, b: a - lr * b, omega, g)
        if tau is not None:  # eq. 12 on the displacements
            omega_bar = jax.tree.map(lambda a, b: (1 - tau) * a + tau * b, omega_bar, omega)
        return omega, omega_bar

    omega = omega_bar = jax.tree.map(jnp.zeros_like, params0)
    q, flat = [], []
    for k in range(steps + 1):
        if k in record:
            q.append(np.asarray((f0 + jvp(omega))[n + nk :]))
            flat.append(np.asarray(ravel_pytree(omega)[0]))
        omega, omega_bar = step(omega, omega_bar)
    return np.array(q), np.array(flat)


@pytest.mark.parametrize("tau", [None, 0.25], ids=["single", "target"])
def test_trained_linearised_network_equals_discrete_closed_form(tau):
    data, x_eval = make_problem(seed=7)
    net = tdntk.MLP(depth=2, width=64)
    params = one_member(net, data.input_dim, seed=3)
    target = None if tau is None else SoftTarget(tau)
    lr, steps, record = 0.05, 25, [0, 5, 25]
    with jax.enable_x64(True):
        p64 = jax.tree.map(jnp.asarray, params)
        q_ref, omega_ref = linearised_gd(net, p64, data, x_eval, lr, steps, record, tau)
    q = linearised_q(net, params, data, x_eval, record, Schedule(lr, target, time="discrete"))
    omega = parameter_trajectory(net, params, data, record, Schedule(lr, target, time="discrete"))
    # closed form (eigenbasis / matrix powers) vs 25 float64 steps: 1e-9 relative
    scale = np.abs(q_ref).max()
    np.testing.assert_allclose(q, q_ref, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(omega, omega_ref, rtol=0, atol=1e-9 * np.abs(omega_ref).max())
    assert omega.shape == (3, ravel_pytree(params)[0].size)
    # training changed Q by much more than the tolerance
    assert np.abs(q_ref[-1] - q_ref[0]).max() > 0.05 * scale


def test_input_validation():
    net = tdntk.MLP(depth=1, width=4)
    stacked = normal_params(net, 3, 2, seed=0)
    with pytest.raises(ValueError, match="one network's parameters"):
        empirical_ntk(net, stacked, np.zeros((2, 3)))
    params = one_member(net, 3, seed=0)
    with pytest.raises(ValueError, match=r"x1 must have shape \(n, 3\)"):
        empirical_ntk(net, params, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        EmpiricalKernels(net, params).q0(np.full((1, 3), np.nan))
