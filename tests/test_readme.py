"""The README's Python examples run as written and print what independent routes compute
(docs cannot drift from the code).

Each block runs once; its printed lines are then checked against numbers computed here
without `TDNTK`, `train_ensemble` or `tdntk.empirical`:

* block 0 (closed form): the critical rate from the dense Theta_bar; the target network's
  std and the continuous vs discrete gap from the linear ODE / difference equation of the
  ensemble's function values on all inputs (a matrix exponential, a matrix power);
* block 1 (finite networks): each member retrained by plain float64 gradient steps, and its
  linearisation iterated in parameter space with its full Jacobian.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.flatten_util import ravel_pytree

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert BLOCKS, "README.md should contain ```python examples"


def _half_unit(token: str) -> float:
    """Half a unit in the last printed digit of a decimal number such as '0.298'."""
    return 0.5 * 10.0 ** -len(token.split(".")[1]) if "." in token else 0.5


def _ode_matrices(data, kernel, rows, eta, tau=None):
    """(A, b) of du/dt = A u + b for the ensemble's function values on the stacked inputs.

    Inputs Z = [X; X'; X*] (k = 1) with NTK `kernel` (N, N) on Z. Single network (tau None):
    u = Q(Z), dQ/dt = -eta (Theta_ZX - Theta_ZX' G) delta; target network: u = [Q(Z);
    Qbar(Z)], dQ/dt = -eta Theta_ZX delta', dQbar/dt = tau (Q - Qbar) (eq. 12-13), with
    delta = Q(X) - r - G Q(X'), delta' = Q(X) - r - G Qbar(X'); linearised networks move
    their function values by eta Theta times the loss gradient (eq. 8).
    """
    n, g, r = data.n, data.discount, data.reward
    x_rows, next_rows = rows[:n], rows[n : 2 * n]
    size = kernel.shape[0]
    drive = kernel[:, x_rows] - (0 if tau is not None else kernel[:, next_rows] * g)  # (N, n)
    a = np.zeros((size, size))
    a[:, x_rows] -= eta * drive
    if tau is None:
        a[:, next_rows] += eta * drive * g
        return a, eta * drive @ r
    full = np.zeros((2 * size, 2 * size))
    full[:size, :size] = a
    full[:size, size + next_rows] += eta * drive * g
    full[size:, :size] = tau * np.eye(size)
    full[size:, size:] = -tau * np.eye(size)
    return full, np.concatenate([eta * drive @ r, np.zeros(size)])


def _affine_flow(a, b, t):
    """(Phi, c) with u_t = Phi u_0 + c for du/dt = A u + b: one augmented exponential."""
    size = a.shape[0]
    aug = np.zeros((size + 1, size + 1))
    aug[:size, :size], aug[:size, -1] = a, b
    e = scipy.linalg.expm(aug * t)
    return e[:size, :size], e[:size, -1]


def check_block_0(ns, printed):
    """The closed-form example: shapes, eq. 11, the target network's std, discrete vs continuous."""
    s, data, net = ns["s"], ns["data"], ns["net"]
    eta, n = 0.01, data.n
    assert len(printed) == 4, printed
    # 1. shapes: t = [0, 2^8, 2^16, inf] at linspace(-0.5, 2.5, 61), as the README's comment
    # on that line says
    comment = re.search(r"print\(g\.mean\.shape, g\.cov\.shape\)\s*#\s*(.*)", BLOCKS[0]).group(1)
    times, m = 4, 61
    assert printed[0] == comment.strip() == f"({times}, {m}) ({times}, {m}, {m})"
    # 2. eq. 11 from the dense Theta_bar = D Theta D^T, D = [I, -G] on [X; X']
    z = np.concatenate([data.x, data.x_next_flat, s])
    rows = np.arange(3 * n)
    kernel_k, kernel_t = net.kernels(z)
    d = np.concatenate([np.eye(n), -np.diag(data.discount), np.zeros((n, n))], axis=1)
    evals = np.linalg.eigvalsh(d @ kernel_t @ d.T)
    assert evals[0] > 1e-6 * evals[-1]  # full rank: l_min is the smallest eigenvalue
    token = re.fullmatch(r"critical learning rate \(eq\. 11\): (\S+)", printed[1]).group(1)
    assert abs(float(token) - 2 / (evals[0] + evals[-1])) <= _half_unit(token)
    # 3. target network (tau = 0.1), t = 2048: u_0 = [Q_0; Q_0] with Q_0 ~ N(0, K) on Z
    phi, _ = _affine_flow(*_ode_matrices(data, kernel_t, rows, eta, tau=0.1), 2048)
    cov0 = np.block([[kernel_k, kernel_k], [kernel_k, kernel_k]])
    sel = 2 * n + np.arange(len(s))  # Q(X*)
    std = np.sqrt(np.diag(phi[sel] @ cov0 @ phi[sel].T))
    # printed in full (repr); tolerance 1e-8 relative: both routes lose ~1e-12 / var in
    # cancellations of O(K) terms down to var ~ 3e-4
    np.testing.assert_allclose(float(printed[2]), std.max(), rtol=1e-8)
    # 4. means after 2^16 steps: continuous flow vs the exact GD step map, from Q_0 = 0
    a, b = _ode_matrices(data, kernel_t, rows, eta)
    cont = _affine_flow(a, b, 2**16)[1][sel]
    step = np.eye(len(z) + 1)
    step[:-1, :-1] += a
    step[:-1, -1] = b
    disc = np.linalg.matrix_power(step, 2**16)[:-1, -1][sel]
    # a gap of ~2e-8 between two O(1) means that each carry ~1e-11 round-off (Theta_bar's
    # condition number ~3e4): absolute tolerance 1e-9, i.e. the printed ~2 significant digits
    gap = np.abs(disc - cont).max()
    assert abs(float(printed[3]) - gap) <= 1e-9, (printed[3], gap)
    assert 1e-9 < gap < 1e-6  # the README's point: the two agree, but are not identical


def check_block_1(ns, printed):
    """The finite-network example: recorded steps and shapes, and the network-linearisation gap."""
    net, data, x_eval, res = ns["net"], ns["data"], ns["x_eval"], ns["res"]
    eta, steps, members = 0.01, 64, 4  # the README's settings
    assert len(printed) == 2, printed
    match = re.fullmatch(r"\[([\d\s]+)\] \((\d+), (\d+), (\d+)\)", printed[0])
    recorded = [int(v) for v in match.group(1).split()]
    expected = [0] + [2**i for i in range(7)]  # 0, 1, 2, 4, ..., 64 (README's comment)
    assert recorded == expected
    assert [int(match.group(i)) for i in (2, 3, 4)] == [len(expected), members, len(x_eval)]

    with jax.enable_x64(True):
        x, x_next, r, g, x_star = (
            jnp.asarray(a, jnp.float64)
            for a in (data.x, data.x_next_flat, data.reward, data.discount, x_eval)
        )

        def member(params0):
            flat0, unravel = ravel_pytree(params0)

            def f(w, inputs):
                return net.apply(unravel(w), inputs)

            def loss(w):  # eq. 6, gradients through both terms
                return 0.5 * jnp.sum((f(w, x) - r - g * f(w, x_next)) ** 2)

            w_nn = jax.lax.fori_loop(0, steps, lambda _, w: w - eta * jax.grad(loss)(w), flat0)
            jac = [jax.jacrev(f)(flat0, inputs) for inputs in (x, x_next, x_star)]
            f0 = [f(flat0, inputs) for inputs in (x, x_next, x_star)]
            d = jac[0] - g[:, None] * jac[1]

            def lin_step(_, dw):  # the same loss for f0 + J dw (eq. 8)
                delta = f0[0] + jac[0] @ dw - r - g * (f0[1] + jac[1] @ dw)
                return dw - eta * d.T @ delta

            dw = jax.lax.fori_loop(0, steps, lin_step, jnp.zeros_like(flat0))
            return f(w_nn, x_star), f0[2] + jac[2] @ dw

        params0 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), res.params0)
        q_nn, q_lin = (np.asarray(a) for a in jax.lax.map(jax.jit(member), params0))
    # the README trains in float32: its networks differ from these float64 ones by ~4e-7
    # (measured); tolerance 1e-5 absolute, ~5e-4 of the printed gap
    np.testing.assert_allclose(res.q[-1], q_nn, atol=1e-5)
    gap = np.abs(q_lin - q_nn).max()
    assert abs(float(printed[1]) - gap) <= 1e-5, (printed[1], gap)
    assert gap > 1e-3  # a real gap: the tolerance is far below it


CHECKS = {0: check_block_0, 1: check_block_1}


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_and_prints_what_independent_routes_compute(
    index, tmp_path, monkeypatch
):
    assert index in CHECKS, f"README python block {index} has no check of what it prints"
    monkeypatch.chdir(tmp_path)
    namespace, out = {}, io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), namespace)
    CHECKS[index](namespace, out.getvalue().splitlines())
