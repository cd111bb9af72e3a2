"""Empirical NTK of an MLP: layer-structure fast path vs full Jacobian products J J^T.

Prints the time of `tdntk.empirical.empirical_ntk` (per-layer Gram products of
activations and backpropagated signals) and of `empirical_ntk_jacobian`
(J (n, P) by jax.jacrev, then J J^T), both float64, their ratio and their
largest difference, for 4,096 inputs at width 256, depth 2 (CartPole's X and X'').

    .venv/bin/python benchmarks/bench_empirical_ntk.py [--inputs 4096] [--width 256]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import tdntk
from tdntk.empirical import empirical_ntk, empirical_ntk_jacobian


def timed(fn, *args):
    tick = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - tick


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=4096)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--features", type=int, default=6)
    args = parser.parse_args()
    net = tdntk.MLP(args.depth, args.width)
    params = net.init(jax.random.PRNGKey(0), args.features)
    n_params = sum(a.size for a in jax.tree.leaves(params))
    x = np.random.default_rng(0).normal(size=(args.inputs, args.features))
    print(
        f"MLP depth {args.depth}, width {args.width}, {n_params} parameters, {args.inputs} inputs"
    )
    small = x[:64]
    empirical_ntk(net, params, small)  # compile both routes before timing
    empirical_ntk_jacobian(net, params, small)
    fast, t_fast = timed(empirical_ntk, net, params, x)
    print(f"layer-structure fast path: {t_fast:8.2f} s")
    ref, t_ref = timed(empirical_ntk_jacobian, net, params, x)
    print(f"full Jacobian J J^T:       {t_ref:8.2f} s")
    err = np.abs(fast - ref).max() / np.abs(ref).max()
    print(f"speed-up {t_ref / t_fast:.1f}x (target >= 20x); max relative difference {err:.1e}")


if __name__ == "__main__":
    main()
