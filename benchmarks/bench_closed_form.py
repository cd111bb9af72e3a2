"""Closed-form TD-NTK at CartPole scale vs the paper's literal route (issue 3).

|D| = 2048 transitions, input width 6 (4 state dims + one-hot of 2 actions),
depth-2 ReLU, 1,000 test inputs, the 17 times t = 2^0 ... 2^16 plus infinity,
full covariance.  Inputs are synthetic with CartPole's shapes (the timing
depends on sizes, not on values).

Our route (the dense solver, JAX float64): one eigendecomposition of the
driving kernel for every t (single network); one augmented exponential then
squarings on the doubling grid (target network).  The paper's literal route:
a fresh matrix exponential and solve for every t (eq. 10 and eq. 52); it is
timed on a few times and extrapolated linearly to the 17, as printed.

The dense floor: what no dense route can avoid, timed in the same run with
the same library: the kernels on the distinct training inputs and on the
test inputs, one ``eigh`` of the p x p driving kernel, and the two matrix
products each time needs for the covariance (p x p x m and m x p x m).
Every route is timed after a warm-up at the same shapes (XLA compiles once).

Run: .venv/bin/python benchmarks/bench_closed_form.py [--n 2048] [--m 1000]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

import tdntk


def cartpole_shaped(n, m, seed=0):
    rng = np.random.default_rng(seed)

    def inputs(k):
        return np.hstack([rng.normal(size=(k, 4)), np.eye(2)[rng.integers(0, 2, k)]])

    data = tdntk.Transitions.from_gamma(
        inputs(n), np.ones(n), inputs(n), 1.0, terminated=rng.random(n) < 0.02
    )
    return data, inputs(m)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def literal_single(net, data, x_test, lr, times):
    """eq. 10 as printed: for each t, expm(-eta Theta_bar t) and a solve with Theta_bar."""
    n = data.n
    s = np.concatenate([data.x, data.x_next_flat])
    k_tr, th_tr = net.kernels(s)
    k_ts, th_ts = net.kernels(x_test, s)
    k_tt, _ = net.kernels(x_test)
    g = data.discount[:, None]
    th_bar = th_tr[:n, :n] - g * th_tr[n:, :n] - th_tr[:n, n:] * g.T + g * th_tr[n:, n:] * g.T
    kbar = k_tr[:n, :n] - g * k_tr[n:, :n] - k_tr[:n, n:] * g.T + g * k_tr[n:, n:] * g.T
    a = th_ts[:, :n] - th_ts[:, n:] * g.T
    c = (k_ts[:, :n] - k_ts[:, n:] * g.T).T
    for t in times:
        decay = np.eye(n) - scipy.linalg.expm(-lr * th_bar * t)
        z = a @ np.linalg.solve(th_bar, decay)
        _ = z @ data.reward, k_tt - z @ c - (z @ c).T + z @ kbar @ z.T


def literal_target(net, data, x_test, lr, tau, times):
    """eq. 52 as printed: Z = Theta_*X (Theta - G Theta')^{-1} (I - E11 - eta/tau G Theta' E21)."""
    n = data.n
    s = np.concatenate([data.x, data.x_next_flat])
    _, th_tr = net.kernels(s)
    _, th_ts = net.kernels(x_test, s)
    g = data.discount[:, None]
    th_xx, g_th_nx = th_tr[:n, :n], g * th_tr[n:, :n]
    gen = np.block([[-lr * th_xx, lr * g_th_nx], [tau * np.eye(n), -tau * np.eye(n)]])
    for t in times:
        e = scipy.linalg.expm(gen * t)
        inner = np.eye(n) - e[:n, :n] - (lr / tau) * g_th_nx @ e[n:, :n]
        _ = th_ts[:, :n] @ np.linalg.solve(th_xx - g_th_nx, inner)


def basis_change(p: int) -> float:
    """Seconds of ``Q^T Kbar Q``: two (p, p) x (p, p) products, warm (the eigenbasis route's
    one cost beyond the floor)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        q, k = (jnp.asarray(rng.normal(size=(p, p))) for _ in range(2))
        project = jax.jit(lambda q, k: q.T @ k @ q)
        jax.block_until_ready(project(q, k))
        return timed(lambda: jax.block_until_ready(project(q, k)))[1]


def dense_floor(net, model, x_test, n_times) -> float:
    """Seconds of the unavoidable dense work (module docstring), warm."""
    y = model.reduced.inputs
    p = model.reduced.p
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        spd = jnp.asarray(np.cov(rng.normal(size=(p, p + 5))))
        a = jnp.asarray(rng.normal(size=(p, p)))
        b = jnp.asarray(rng.normal(size=(p, x_test.shape[0])))
        eigh = jax.jit(jnp.linalg.eigh)
        gemm = jax.jit(lambda u, v: u @ v)

        def work():
            jax.block_until_ready(net.device_kernels(y))
            jax.block_until_ready(net.device_kernels(x_test, y))
            jax.block_until_ready(net.device_kernels(x_test)[0])
            jax.block_until_ready(eigh(spd))
            for _ in range(n_times):
                g = gemm(a, b)  # Kbar coef^T: (p, p) x (p, m)
                jax.block_until_ready(gemm(b.T, g))  # coef G: (m, p) x (p, m)

        work()
        return timed(work)[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--m", type=int, default=1000)
    parser.add_argument("--literal-times", type=int, default=2, help="times to run literally")
    args = parser.parse_args()
    net = tdntk.MLP(depth=2, width=256, activation="relu", weight_var=1.0, bias_var=0.1)
    data, x_test = cartpole_shaped(args.n, args.m)
    times = np.concatenate([2.0 ** np.arange(17), [np.inf]])
    print(f"|D| = {args.n}, m = {args.m}, T = {times.size} (2^0..2^16, inf), full covariance")

    s = np.concatenate([data.x, data.x_next_flat, x_test])
    net.kernels(s[:10])  # compile outside the timings
    _, t_kernels = timed(lambda: net.kernels(s, s))
    print(f"analytic kernels for {s.shape[0]} points: {t_kernels:.2f} s")

    lr = 1e-3
    warm = tdntk.TDNTK(net, data, tdntk.Schedule(lr))  # compile at these shapes
    warm.predict(x_test, times[:2])
    model, t_build = timed(lambda: tdntk.TDNTK(net, data, tdntk.Schedule(lr)))
    _, t_first = timed(lambda: model.predict(x_test, times[:1]))
    _, t_all = timed(lambda: model.predict(x_test, times))
    per_extra = (t_all - t_first) / (times.size - 1)
    single_total = t_build + t_all
    print(f"\nsingle network (eta = {lr:g}; critical rate {model.critical_learning_rate:.3g})")
    print(f"  build (kernels on D, eigh of Theta_bar, basis change): {t_build:.2f} s")
    print(f"  predict at 1 time: {t_first:.2f} s; at all 18 times: {t_all:.2f} s")
    print(
        f"  each extra time: {per_extra:.3f} s = {100 * per_extra / (t_build + t_first):.1f} %"
        " of the first prediction (build + 1 time)"
    )
    print(f"  end to end, 18 times: {single_total:.2f} s")
    floor = dense_floor(net, model, x_test, times.size)
    print(
        f"  dense floor ({model.reduced.inputs.shape[0]} distinct inputs, eigh of "
        f"{model.reduced.p} x {model.reduced.p}, two products per time): {floor:.2f} s; "
        f"the route takes {single_total / floor:.2f}x the floor (goal <= 1.1x)"
    )
    change = basis_change(model.reduced.p)
    print(
        f"  basis change Q^T Kbar Q (two {model.reduced.p}^3 products): {change:.2f} s; the "
        f"route takes {single_total / (floor + change):.2f}x floor + basis change"
    )

    k_lit = args.literal_times
    _, t_lit = timed(lambda: literal_single(net, data, x_test, lr, times[1 : 1 + k_lit]))
    lit_single = t_lit / k_lit * 17
    print(
        f"  literal route (expm + solve per t): {t_lit / k_lit:.2f} s per time, "
        f"~{lit_single:.1f} s for 17 times (extrapolated from {k_lit})"
    )
    print(f"  speed-up over the literal route: {lit_single / single_total:.1f}x")

    tau = 0.1
    td = tdntk.Schedule(lr, tdntk.SoftTarget(tau))
    tdntk.TDNTK(net, data, td).predict(x_test, times[:2])  # compile at these shapes
    target, t_tbuild = timed(lambda: tdntk.TDNTK(net, data, td))
    _, t_tall = timed(lambda: target.predict(x_test, times))
    print(f"\ntarget network (tau = {tau})")
    print(
        f"  build: {t_tbuild:.2f} s; predict at 18 times (one exponential + squarings): "
        f"{t_tall:.2f} s; end to end {t_tbuild + t_tall:.2f} s"
    )
    _, t_tlit = timed(lambda: literal_target(net, data, x_test, lr, tau, times[16:17]))
    print(
        f"  literal route (expm of 2|D| + solve per t): {t_tlit:.2f} s per time, "
        f"~{17 * t_tlit:.0f} s for 17 times (extrapolated from 1)"
    )
    print(f"  speed-up over the literal route: {17 * t_tlit / (t_tbuild + t_tall):.1f}x")


if __name__ == "__main__":
    main()
