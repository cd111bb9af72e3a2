"""Throughput of TD ensemble training (tdntk.training), measured in one run.

Prints, for the CartPole setting (width 256, depth 2, |D| = 2048, E = 50) and
the toy setting (width 1024, depth 2, |D| = 21, E = 50):

* steps/s of the whole ensemble for member_map="vmap" and "map";
* achieved FLOP/s (matmul FLOPs counted from the layer sizes) as a fraction of
  this machine's dense float32 matmul FLOP/s, measured here;
* the ratio against a per-member Python loop of jitted single-member steps;
* the projected time of the paper's runs (2^16 steps, 50 members) and of the
  closed form's prediction of the same quantity (TDNTK at t = 2^16).

Timings use a few steps after a warm-up call and are extrapolated.

    .venv/bin/python benchmarks/bench_training.py [--steps 2] [--loop-steps 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import tdntk
from tdntk.training import (
    _batch,
    _compiled,
    _Spec,
    init_ensemble,
    resolve_member_map,
    td_loss,
)

PAPER_STEPS = 2**16


def matmul_flops(size: int = 2048, repeats: int = 10) -> float:
    """Measured dense float32 matmul FLOP/s (size x size @ size x size)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    tick = time.perf_counter()
    for _ in range(repeats):
        f(a).block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - tick)


def step_flops(net: tdntk.MLP, input_dim: int, rows_fwd: int, rows_bwd: int) -> float:
    """Matmul FLOPs of one TD gradient step of one member.

    Forward over `rows_fwd` inputs; backward (weight and input gradients) over
    `rows_bwd` (the inputs that carry gradients); no input gradient at layer 1.
    """
    sizes = [input_dim] + [net.width] * net.depth + [1]
    macs = [a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    return 2.0 * (rows_fwd * sum(macs) + rows_bwd * sum(macs) + rows_bwd * sum(macs[1:]))


def make_data(n: int, d: int, seed: int = 0) -> tdntk.Transitions:
    rng = np.random.default_rng(seed)
    return tdntk.Transitions.from_gamma(
        rng.normal(size=(n, d)), rng.normal(size=n), rng.normal(size=(n, d)), 0.99,
        rng.random(n) < 0.05,
    )  # fmt: skip


def ensemble_timer(net, data, x_eval, members, member_map, lr):
    """A function steps -> seconds per ensemble step of train_ensemble's compiled chunk.

    The chunk is the one `train_ensemble` runs between record points (records off);
    it is compiled here, before any timing.
    """
    spec = _Spec(net, lr, 1.0, None, None, member_map)
    chunk = _compiled(spec, tuple(jax.devices()))
    batch = _batch(data, jnp.float32, has_target=False)
    params0 = init_ensemble(net, data.input_dim, members)
    x_eval = jnp.asarray(x_eval, jnp.float32)

    def run(steps):
        state, _ = chunk((params0, ()), params0, batch, x_eval, jnp.int32(0), jnp.int32(steps),
                         jnp.bool_(False))  # fmt: skip
        return state

    jax.block_until_ready(run(1))

    def seconds_per_step(steps):
        tick = time.perf_counter()
        state = jax.block_until_ready(run(steps))
        assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(state))
        return (time.perf_counter() - tick) / steps

    return seconds_per_step


def time_python_loop(net, data, members, steps, lr) -> float:
    """Seconds per ensemble step of a Python loop over members and steps (jitted member step)."""
    spec = _Spec(net, lr, 1.0, None, None, "vmap")
    batch = _batch(data, jnp.float32, has_target=False)

    @jax.jit
    def step(params):
        grads = jax.grad(td_loss, argnums=1)(spec.net, params, None, batch, 1.0)
        return jax.tree.map(lambda p, g: p - lr * g, params, grads)

    params0 = init_ensemble(net, data.input_dim, members)
    member = [jax.tree.map(lambda a, i=i: a[i], params0) for i in range(members)]
    jax.block_until_ready(step(member[0]))
    tick = time.perf_counter()
    for i in range(members):
        p = member[i]
        for _ in range(steps):
            p = step(p)
        jax.block_until_ready(p)
    return (time.perf_counter() - tick) / steps


def closed_form_seconds(net, data, x_eval, lr) -> float:
    tick = time.perf_counter()
    tdntk.TDNTK(net, data, tdntk.Schedule(lr)).predict(x_eval, PAPER_STEPS, full_cov=False)
    return time.perf_counter() - tick


def bench(name, net, n, d, members, steps, loop_steps, lr, repeats):
    """Paired bursts: every repeat times the matmul, vmap, map and the Python loop one after
    the other, so that load from other processes hits them alike; medians are reported."""
    data = make_data(n, d)
    x_eval = np.random.default_rng(1).normal(size=(n, d))
    flops = members * step_flops(net, d, rows_fwd=2 * n, rows_bwd=2 * n)
    print(f"\n== {name}: width {net.width}, depth {net.depth}, |D| = {n}, d = {d}, E = {members}")
    print(f"   matmul FLOPs per ensemble step: {flops / 1e9:.2f} GFLOP")
    timers = {mm: ensemble_timer(net, data, x_eval, members, mm, lr) for mm in ("vmap", "map")}
    times = {"peak": [], "vmap": [], "map": [], "loop": []}
    for _ in range(repeats):
        times["peak"].append(1 / matmul_flops(repeats=3))
        for mm, timer in timers.items():
            times[mm].append(timer(steps))
        times["loop"].append(time_python_loop(net, data, members, loop_steps, lr))
    med = {k: float(np.median(v)) for k, v in times.items()}
    peak = 1 / med["peak"]
    print(f"   dense float32 matmul (2048^3), median of {repeats}: {peak / 1e9:.1f} GFLOP/s")
    for mm in ("vmap", "map", "loop"):
        rate = flops / med[mm]
        label = "Python loop" if mm == "loop" else f"member_map={mm}"
        paired = np.median(flops * np.array(times["peak"]) / np.array(times[mm]))
        print(
            f"   {label:16s}: {1 / med[mm]:8.3f} steps/s, {rate / 1e9:7.1f} GFLOP/s"
            f" = {100 * rate / peak:5.1f} % of matmul (paired median {paired:.1%})"
        )
    fastest = min(("vmap", "map"), key=med.get)
    paired = np.median(np.array(times["loop"]) / np.array(times[fastest]))
    print(f"   fastest: {fastest}; the per-member Python loop takes {paired:.2f}x its time")
    hours = PAPER_STEPS * med[fastest] / 3600
    closed = closed_form_seconds(net, data, x_eval, lr)
    print(
        f"   projected 2^16 steps x {members} members: {hours:.2f} h; closed form (TDNTK, "
        f"{n} test inputs, t = 2^16): {closed:.2f} s; ratio {hours * 3600 / closed:.0f}x"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps (CartPole; toy x4)")
    parser.add_argument("--loop-steps", type=int, default=2, help="steps of the Python loop")
    parser.add_argument("--repeats", type=int, default=5, help="paired repeats (median)")
    args = parser.parse_args()
    print(f"backend {jax.default_backend()}, devices {jax.devices()}, auto -> "
          f"{resolve_member_map('auto')}")  # fmt: skip
    r = args.repeats
    bench("CartPole", tdntk.MLP(2, 256), 2048, 6, 50, args.steps, args.loop_steps, 1e-4, r)
    bench("toy", tdntk.MLP(2, 1024), 21, 1, 50, 4 * args.steps, 4 * args.loop_steps, 0.01, r)


if __name__ == "__main__":
    main()
