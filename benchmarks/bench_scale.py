"""Dense vs matrix-free TD-NTK from 10^3 to 10^5 transitions: time, peak memory, accuracy.

Each case runs in its own process (so its peak resident memory is its own):
CartPole-shaped trajectories (4 state dims + one-hot of 2 actions, the next
input of a transition is the next transition's input within an episode, as
in SARSA data, so N ~ n distinct inputs), the TD estimator at t = inf (the
default of ``tdntk evaluate``) and at t = 2^16, mean and variance at 1,000
test inputs. Printed, from one run:

* time and peak memory of ``dense`` and ``krylov`` per n, and the growth
  exponent fitted to the measured times (log-log least squares);
* the largest n each fits in 24 GiB (from the measured memory, fitted in
  N^2 for dense and in N for krylov);
* the matrix-free route's error against the dense route where both ran
  (mean: relative to max |mean|; std: relative to the prior std);
* projections to n = 10^5 (CPU) and 10^6, labelled as projections: dense
  from its fitted time exponent; krylov from its kernel products (fitted in n)
  times one product with the kernels streamed (measured at the largest N,
  scaled by N^2), since the measured sizes keep the kernels cached and the
  projected ones cannot; a GPU run replaces the projection when one is lent
  (``--max-n 1000000`` on the device machine).

Run: .venv/bin/python benchmarks/bench_scale.py [--sizes 1000 4000 16384] [--max-n N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

CASE = """
import json, resource, sys, time, warnings
import numpy as np
import jax
sys.path.insert(0, {bench!r})
from bench_scale import trajectories
import tdntk
from tdntk.solvers.choice import Krylov
n, solver = {n}, {solver!r}
data, x_test = trajectories(n, 1000)
spec = "dense" if solver == "dense" else Krylov(tol={tol}, rank={rank})
start = time.perf_counter()
model = tdntk.TDNTK(tdntk.MLP(2, 256), data, tdntk.Schedule(1e-4, tdntk.SoftTarget(1.0)), spec)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", tdntk.LearningRateWarning)
    pred = model.predict(x_test, [2.0**16, np.inf], full_cov=False)
wall = time.perf_counter() - start
prior = tdntk.MLP(2, 256).kernel_diagonals(x_test)[0]
report = getattr(model.solver, "report", None)
out = dict(n=n, solver=solver, wall=wall, rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           distinct=int(model.reduced.inputs.shape[0]), p=int(model.reduced.p),
           device=jax.default_backend(),
           iterations=None if report is None else report.iterations,
           cached=None if report is None else report.cached)
np.savez({path!r}, mean=pred.mean, std=pred.std, prior=np.sqrt(prior))
print(json.dumps(out))
"""


def trajectories(n: int, m: int, seed: int = 0):
    """CartPole-shaped SARSA data (N ~ n distinct inputs) and m test inputs."""
    import tdntk

    rng = np.random.default_rng(seed)
    state = rng.normal(size=(n + 1, 4)).cumsum(axis=0) * 0.05
    action = rng.integers(0, 2, n + 1)
    x = np.hstack([state, np.eye(2)[action]])
    ends = rng.random(n) < 0.02  # episode ends: terminal transitions
    data = tdntk.Transitions.from_gamma(x[:n], np.ones(n), x[1:], 0.99, terminated=ends)
    test = np.hstack([rng.normal(size=(m, 4)) * 0.5, np.eye(2)[rng.integers(0, 2, m)]])
    return data, test


def run_case(n: int, solver: str, tol: float, rank: int, path: str) -> dict | None:
    code = CASE.format(bench=os.path.dirname(os.path.abspath(__file__)), n=n, solver=solver,
                       tol=tol, rank=rank, path=path)  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {solver} n={n}: failed ({proc.stderr.strip().splitlines()[-1][:200]})")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def project_streamed(sel: list[dict], streamed: tuple[int, float]) -> None:
    """Projections where the kernels no longer fit in memory: kernel products (fitted in n)
    times one streamed product (measured at N, scaled by N^2)."""
    ns = np.array([r["n"] for r in sel], float)
    pa, pb = fit_exponent(ns, [r["iterations"] for r in sel])
    n_meas, seconds = streamed
    print(f"    kernel products ~ n^{pa:.2f}; one streamed product (kernels not cached) at "
          f"N = {n_meas:,}: {seconds:.2f} s")  # fmt: skip
    for target in (100_000, 1_000_000):
        products = np.exp(pb) * target**pa
        hours = products * seconds * (target / n_meas) ** 2 / 3600
        print(f"    projection (not measured) at n = {target:,}: {products:,.0f} products x "
              f"{seconds * (target / n_meas) ** 2:.0f} s = {hours:,.0f} h on this machine "
              "(kernels streamed)")  # fmt: skip


def fit_exponent(ns, values) -> tuple[float, float]:
    """log(value) = a log(n) + b: (a, b)."""
    a, b = np.polyfit(np.log(ns), np.log(values), 1)
    return float(a), float(b)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8192, 16384])
    parser.add_argument("--dense-max", type=int, default=16384, help="largest n for dense")
    parser.add_argument("--max-n", type=int, default=0, help="also run krylov at this n")
    parser.add_argument("--tol", type=float, default=1e-8)
    parser.add_argument("--rank", type=int, default=256)
    parser.add_argument("--out", default="/tmp/tdntk_bench_scale")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores; peak memory is each case's own process (ru_maxrss)")
    rows = []
    sizes = sorted(set(args.sizes + ([args.max_n] if args.max_n else [])))
    for n in sizes:
        for solver in ("dense", "krylov"):
            if solver == "dense" and n > args.dense_max:
                continue
            if solver == "krylov" and n > max(args.sizes) and n != args.max_n:
                continue
            path = os.path.join(args.out, f"{solver}_{n}.npz")
            tick = time.perf_counter()
            row = run_case(n, solver, args.tol, args.rank, path)
            if row is None:
                continue
            row["path"] = path
            rows.append(row)
            print(f"  {solver:6s} n={n:7d} N={row['distinct']:7d}: {row['wall']:8.1f} s, "
                  f"peak {row['rss'] / 2**20:6.2f} GiB"
                  + ("" if row["iterations"] is None else
                     f", {row['iterations']} kernel products, cached={row['cached']}")
                  + f" ({time.perf_counter() - tick:.0f} s with start-up)")  # fmt: skip
    summarise(rows, streamed_product_seconds(max(r["distinct"] for r in rows)))


STREAM = """
import sys, time, numpy as np, jax, jax.numpy as jnp
import tdntk
from tdntk.solvers.kernel_products import KernelProducts
x = np.random.default_rng(0).normal(size=({n}, 6))
with jax.enable_x64(True):
    kp = KernelProducts(tdntk.MLP(2, 256), x, cache_bytes=0)
    v = jnp.ones(({n}, 1))
    jax.block_until_ready(kp(v))
    tick = time.perf_counter()
    jax.block_until_ready(kp(v))
    print(time.perf_counter() - tick)
"""


def streamed_product_seconds(n: int) -> tuple[int, float]:
    """(N, seconds of one kernel product at N inputs with the kernels streamed, not cached)."""
    proc = subprocess.run([sys.executable, "-c", STREAM.format(n=n)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return n, float(proc.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict], streamed: tuple[int, float]) -> None:
    gib = 24 * 2**30
    print("\nfitted growth (time ~ n^a) and the largest n in 24 GiB:")
    for solver in ("dense", "krylov"):
        sel = [r for r in rows if r["solver"] == solver]
        if len(sel) < 2:
            continue
        ns = np.array([r["n"] for r in sel], float)
        a, b = fit_exponent(ns, [r["wall"] for r in sel])
        mem = np.array([r["rss"] * 1024.0 for r in sel])
        power = 2 if solver == "dense" else 1
        coef = np.polyfit(ns**power, mem, 1)  # memory = c1 n^power + c0
        largest = ((gib - coef[1]) / coef[0]) ** (1 / power) if coef[0] > 0 else np.inf
        print(f"  {solver}: time ~ n^{a:.2f}; memory ~ {coef[0]:.3g} n^{power} + "
              f"{coef[1] / 2**30:.2f} GiB -> largest n in 24 GiB ~ {largest:,.0f}")  # fmt: skip
        for target in (100_000, 1_000_000):
            if target > ns.max() and solver == "dense":
                print(f"    projection (not measured) at n = {target:,}: "
                      f"{np.exp(b) * target**a / 3600:.1f} h on this machine")  # fmt: skip
        if solver == "krylov":
            project_streamed(sel, streamed)
    print("\nmatrix-free vs dense where both ran (relative errors):")
    for r in rows:
        if r["solver"] != "krylov":
            continue
        dense = next((d for d in rows if d["solver"] == "dense" and d["n"] == r["n"]), None)
        if dense is None:
            continue
        a, d = np.load(r["path"]), np.load(dense["path"])
        mean_err = np.abs(a["mean"] - d["mean"]).max() / np.abs(d["mean"]).max()
        std_err = (np.abs(a["std"] - d["std"]) / d["prior"]).max()
        print(f"  n={r['n']}: mean {mean_err:.1e}, std {std_err:.1e} (of the prior std)")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
