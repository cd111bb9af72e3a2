"""Analytic NNGP + NTK: `MLP.kernels` against neural-tangents 0.6.5, in one run.

Both compute the full float64 NNGP and NTK matrices of the same points for a
depth-2 ReLU network in the NTK parametrisation with sigma_w^2 = 1 and
sigma_b^2 = 0.1 (the paper's): tdntk's ``MLP(2, activation="relu",
weight_var=1.0, bias_var=0.1).kernels(x)`` and neural-tangents'
``stax.serial(Dense, Relu, Dense, Relu, Dense)`` kernel_fn (W_std = 1, b_std =
sqrt(0.1), ``get=("nngp", "ntk")``, jitted, ``jax_enable_x64``), both ending
in NumPy arrays on the host. Points: standard normal, dimension 6 (CartPole's
4 state dims + 2 actions), 5,096 of them plus a smaller and a larger size.

Two cases per size: the kernel of the points with themselves (``kernels(x)``;
nt's ``kernel_fn(x, None)``) and a cross kernel between two different sets of
the same size (``kernels(x, y)``; ``kernel_fn(x, y)``), where no symmetry can
be used.

neural-tangents 0.6.5 does not import under this project's JAX, so it runs in
its own virtual environment, in a subprocess that stays alive for the whole
run. Repeats alternate between the two (tdntk, nt, tdntk, nt, ...), so machine
load falls on both alike; each side's first call (compilation) is not timed;
the best wall-clock time of the repeats is reported, with the CPU time of that
process (all threads) beside it, and the ratio tdntk / nt of the best times.
The numbers are checked to agree (largest relative difference of all entries).
Speed is measured here, never asserted in a test.

Reference environment (outside the repository; its path goes to --nt-python or
the TDNTK_NT_PYTHON environment variable). neural-tangents 0.6.5 imports
tensorflow through tf2jax at import time, and needs NumPy < 2 with JAX 0.4.23:

    python3 -m venv /tmp/ntenv
    /tmp/ntenv/bin/pip install neural-tangents==0.6.5 jax==0.4.23 jaxlib==0.4.23 \\
        numpy==1.26.4 tensorflow-cpu==2.15.1
    /tmp/ntenv/bin/pip uninstall -y tensorflow   # if pip pulled a newer one too

(measured with jax/jaxlib 0.4.23, numpy 1.26.4, scipy 1.12.0, tensorflow-cpu
2.15.1, tf2jax 0.3.6, ml-dtypes 0.3.2, Python 3.11). Without it, tdntk's times
are still reported, with a note.

Also reported: entries per second of the recursion (NNGP and NTK together) at
the row-block shapes of a matrix-free solver, b rows in {64, 256, 1024} against
N columns in {8192, 65536}: `_kernel_recursion` and `_kernel_pair` called on one
block, and jit(lax.map) over row blocks forming K v and Theta v (see
`block_throughput`).

    .venv/bin/python benchmarks/bench_kernels.py [--nt-python /tmp/ntenv/bin/python]
        [--sizes 1274 5096 8192] [--repeats 5] [--no-blocks]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import tdntk
from tdntk.nets import _kernel_pair, _kernel_recursion

SIGMA_W2, SIGMA_B2, DEPTH, DIM = 1.0, 0.1, 2, 6

# The neural-tangents side, run by the other environment's python. One JSON
# command per line on stdin, one JSON answer per line on stdout.
_NT_WORKER = r"""
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import neural_tangents
from neural_tangents import stax

SW, SB = float(sys.argv[1]) ** 0.5, float(sys.argv[2]) ** 0.5
layers = []
for _ in range(int(sys.argv[3])):
    layers += [stax.Dense(512, W_std=SW, b_std=SB, parameterization="ntk"), stax.Relu()]
layers.append(stax.Dense(1, W_std=SW, b_std=SB, parameterization="ntk"))
kernel_fn = jax.jit(stax.serial(*layers)[2], static_argnames="get")

def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

reply({"jax": jax.__version__, "jaxlib": jax.lib.__version__, "numpy": np.__version__,
       "neural_tangents": getattr(neural_tangents, "__version__", "?")})
for line in sys.stdin:
    cmd = json.loads(line)
    x = np.load(cmd["x"])
    y = None if cmd["y"] is None else np.load(cmd["y"])
    cpu, wall = time.process_time(), time.perf_counter()
    k = kernel_fn(x, y, get=("nngp", "ntk"))
    nngp, ntk = np.asarray(k.nngp), np.asarray(k.ntk)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if cmd.get("save"):
        np.save(cmd["save"] + "_nngp.npy", nngp)
        np.save(cmd["save"] + "_ntk.npy", ntk)
    reply({"wall": wall, "cpu": cpu, "dtype": str(nngp.dtype)})
"""


class NeuralTangents:
    """A neural-tangents worker process in the reference environment."""

    def __init__(self, python):
        self.proc = subprocess.Popen(
            [python, "-c", _NT_WORKER, str(SIGMA_W2), str(SIGMA_B2), str(DEPTH)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"},
        )
        self.versions = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the neural-tangents worker exited ({self.proc.wait()})")
        return json.loads(line)

    def run(self, x_path, y_path, save=None):
        self.proc.stdin.write(json.dumps({"x": x_path, "y": y_path, "save": save}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def start_reference(python):
    if not python:
        print("note: no neural-tangents environment given (--nt-python or TDNTK_NT_PYTHON):")
        print("      tdntk's times only; see this file's docstring to build one.")
        return None
    try:
        nt = NeuralTangents(python)
    except (OSError, RuntimeError, json.JSONDecodeError) as err:
        print(f"note: neural-tangents unavailable with {python} ({err}): tdntk's times only.")
        return None
    print(f"reference: neural-tangents {nt.versions['neural_tangents']}, jax "
          f"{nt.versions['jax']}, jaxlib {nt.versions['jaxlib']}, numpy "
          f"{nt.versions['numpy']} ({python})")  # fmt: skip
    return nt


def timed_tdntk(net, x, y):
    cpu, wall = time.process_time(), time.perf_counter()
    out = net.kernels(x, y)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def max_relative_difference(ours, saved_prefix, symmetric):
    """Largest |ours - nt| / |nt| over all entries, and off the diagonal when `symmetric`."""
    worst = off = 0.0
    for name, mine in zip(("nngp", "ntk"), ours, strict=True):
        ref = np.load(f"{saved_prefix}_{name}.npy", mmap_mode="r")
        for r in range(0, len(ref), 1024):  # bounded memory
            a, b = mine[r : r + 1024], np.asarray(ref[r : r + 1024])
            rel = np.abs(a - b) / np.abs(b)
            worst = max(worst, float(rel.max()))
            if symmetric:
                rel[np.arange(len(rel)), r + np.arange(len(rel))] = 0.0
            off = max(off, float(rel.max()))
    return worst, off


def compare(net, nt, n, repeats, tmp, rng):
    x, y = rng.normal(size=(n, DIM)), rng.normal(size=(n, DIM))
    x_path, y_path = os.path.join(tmp, f"x{n}.npy"), os.path.join(tmp, f"y{n}.npy")
    np.save(x_path, x)
    np.save(y_path, y)
    for case, second, second_path in (("self", None, None), ("cross", y, y_path)):
        ours, _, _ = timed_tdntk(net, x, second)  # compiles
        diff = None
        if nt is not None:
            prefix = os.path.join(tmp, f"nt{n}{case}")
            saved = nt.run(x_path, second_path, save=prefix)  # compiles
            if saved["dtype"] != "float64":
                raise RuntimeError(f"neural-tangents gave {saved['dtype']}, not float64")
            diff = max_relative_difference(ours, prefix, second is None)
            for name in ("nngp", "ntk"):
                os.remove(f"{prefix}_{name}.npy")
        del ours
        best_t, best_nt = (np.inf, np.inf), (np.inf, np.inf)
        for _ in range(repeats):
            _, wall, cpu = timed_tdntk(net, x, second)
            best_t = min(best_t, (wall, cpu))
            if nt is not None:
                r = nt.run(x_path, second_path)
                best_nt = min(best_nt, (r["wall"], r["cpu"]))
        line = f"{n:>6} {case:>5}  tdntk {best_t[0]:7.3f} s (cpu {best_t[1]:7.3f})"
        if nt is not None:
            line += (f"  nt {best_nt[0]:7.3f} s (cpu {best_nt[1]:7.3f})  ratio tdntk/nt "
                     f"{best_t[0] / best_nt[0]:5.2f} (cpu {best_t[1] / best_nt[1]:5.2f})  "
                     f"max rel diff {diff[0]:.1e} (off-diagonal {diff[1]:.1e})")  # fmt: skip
        print(line, flush=True)


def _best(fn, repeats):
    """Best (wall, cpu) seconds of fn() over `repeats` calls, after one untimed call."""
    jax.block_until_ready(fn())
    best = (np.inf, np.inf)
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def block_throughput(net, repeats, rng, map_rows=4096):
    """Entries per second of the recursion (NNGP + NTK together) on (b, N) blocks:

    * `_kernel_recursion(x[b rows], x[N rows])` called on its own (two float64 (b, N)
      outputs in memory);
    * `_kernel_pair` on its own (one complex128 (b, N) output, NNGP + 1j NTK);
    * the matrix-free solver's pattern: ``jit(lax.map(row block -> (K v, Theta v)))``
      with `_kernel_recursion` over `map_rows` rows (the b-row blocks of the first
      `map_rows` inputs) against all N, as jitted by default and with
      ``compiler_options={"xla_cpu_prefer_vector_width": 512}`` (CPU).
    """
    print("\nrecursion throughput, depth-2 relu, float64 NNGP + NTK, M entries/s by wall (cpu):")
    static = net._static()
    with jax.enable_x64(True):
        for cols in (8192, 65536):
            x2 = jnp.asarray(rng.normal(size=(cols, DIM)))
            v = jnp.asarray(rng.normal(size=cols))
            for rows in (64, 256, 1024):
                x1 = jnp.asarray(rng.normal(size=(rows, DIM)))
                blocks = x2[:map_rows].reshape(map_rows // rows, rows, DIM)
                line = f"  b {rows:>5} x N {cols:>6}:"
                for label, fn in _block_cases(x1, x2, v, blocks, static).items():
                    wall, cpu = _best(fn, repeats)
                    entries = (map_rows if label.startswith("lax.map") else rows) * cols
                    line += f"  {label} {entries / wall / 1e6:6.1f} ({entries / cpu / 1e6:6.1f})"
                print(line, flush=True)


def _kernel_products(blocks, x2, v, static):
    """(K v, Theta v) for the rows in `blocks` (count, b, d), one row block at a time."""
    return jax.lax.map(lambda b: [m @ v for m in _kernel_recursion(b, x2, **static)], blocks)


def _block_cases(x1, x2, v, blocks, static):
    wide = {"xla_cpu_prefer_vector_width": 512}
    products = partial(_kernel_products, static=static)
    plain = jax.jit(products)
    vector512 = jax.jit(products, compiler_options=wide)
    return {
        "_kernel_recursion": lambda: _kernel_recursion(x1, x2, **static),
        "_kernel_pair": lambda: _kernel_pair(x1, x2, **static),
        "lax.map K v": lambda: plain(blocks, x2, v),
        "lax.map K v, 512": lambda: vector512(blocks, x2, v),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nt-python", default=os.environ.get("TDNTK_NT_PYTHON"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1274, 5096, 8192])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-blocks", action="store_true", help="skip the block throughput")
    args = parser.parse_args()

    print(f"tdntk {tdntk.__version__}, jax "
          f"{jax.__version__}, {os.cpu_count()} cpus, load average before "
          f"{'/'.join(f'{v:.1f}' for v in os.getloadavg())}")  # fmt: skip
    net = tdntk.MLP(DEPTH, activation="relu", weight_var=SIGMA_W2, bias_var=SIGMA_B2)
    rng = np.random.default_rng(0)
    nt = start_reference(args.nt_python)
    print(
        f"depth-{DEPTH} relu, sw2 {SIGMA_W2}, sb2 {SIGMA_B2}, d {DIM}; best of "
        f"{args.repeats} interleaved repeats after compilation (wall, cpu = process time)"
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.sizes:
                compare(net, nt, n, args.repeats, tmp, rng)
    finally:
        if nt is not None:
            nt.close()
    if not args.no_blocks:
        block_throughput(net, args.repeats, rng)
    print(f"load average after {'/'.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
