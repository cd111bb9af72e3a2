"""Shared fixtures: small random TD problems with terminal transitions and stochastic policies."""

from __future__ import annotations

import numpy as np
import pytest

import tdntk


def make_problem(seed=0, n=8, d=3, k=2, m=5, gamma=0.9, terminal_frac=0.25):
    """A random TD dataset with k next-action candidates and some terminal transitions.

    Returns (data (Transitions), x_test (m, d)).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x_next = rng.normal(size=(n, k, d)) if k > 1 else rng.normal(size=(n, d))
    weights = rng.dirichlet(np.ones(k), size=n) if k > 1 else None
    terminated = rng.random(n) < terminal_frac
    terminated[0] = True  # at least one terminal transition
    reward = rng.normal(size=n)
    data = tdntk.Transitions.from_gamma(x, reward, x_next, gamma, terminated, weights)
    return data, rng.normal(size=(m, d))


@pytest.fixture
def problem():
    return make_problem()


@pytest.fixture
def net():
    return tdntk.MLP(depth=2, width=512, activation="relu", weight_var=1.0, bias_var=0.1)


@pytest.fixture
def python_sigint():
    """Python's own Ctrl-C handler for the test: a process started in the background by a
    non-interactive shell inherits SIGINT ignored, and then Ctrl-C cannot be simulated."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
