"""Policies: loading ``PKG.MODULE:FUNC`` (or ``path/file.py:FUNC``), the random policy,
and applying a policy to a batch of states.

A policy is a callable ``policy(obs (o,)) -> action`` (an int for a Discrete
action space, an (a,) array for a Box one); ``obs`` is the observation
flattened with ``gymnasium.spaces.flatten`` (one-hot for a Discrete
observation space), as stored in `OfflineData`. A stochastic policy over Discrete
actions may also define ``policy.action_probs(obs) -> (A,)`` probabilities;
then `collect` samples from them and `to_transitions` uses them as the
next-action weights (the stochastic form on the theory page).

Shapes: n states, o observation features, a action features, A actions.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import gymnasium
import numpy as np

from ..data import check_probability_rows

__all__ = [
    "load_policy",
    "UniformRandomPolicy",
    "is_stochastic",
    "sample_actions",
    "policy_actions",
    "policy_probs",
]

Policy = Callable[[np.ndarray], object]


def load_policy(spec: str) -> Policy:
    """Import a policy from ``PKG.MODULE:FUNC`` or ``path/to/file.py:FUNC``.

    FUNC may be dotted (``module:Class.attr``). The object must be callable.

    Raises:
        ValueError: malformed spec, module or attribute not found, not callable
            (the message names the spec and what failed).
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"policy {spec!r}: expected 'PKG.MODULE:FUNC' or 'path/to/file.py:FUNC'")
    module_name, attr = spec.split(":")
    try:
        module = _import(module_name)
    except ValueError:
        raise
    except Exception as err:  # any import-time failure of the user's module
        raise ValueError(
            f"policy {spec!r}: cannot import {module_name!r} ({type(err).__name__}: {err})"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"policy {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(
            f"policy {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable policy(obs)"
        )
    return obj


def _import(module_name: str):
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"policy file {module_name!r} does not exist")
        name = f"_tdntk_policy_{abs(hash(str(path.resolve())))}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
        return module
    return importlib.import_module(module_name)


class UniformRandomPolicy:
    """Uniformly random actions from `action_space`, seeded (the default of `collect`).

    For a Discrete space it is stochastic with known probabilities
    (``action_probs`` = 1/A each); for a Box space it samples with
    ``action_space.sample()`` (uniform on bounded dimensions).
    """

    def __init__(self, action_space: gymnasium.spaces.Space, seed: int = 0):
        if not isinstance(action_space, gymnasium.spaces.Discrete | gymnasium.spaces.Box):
            raise ValueError(
                f"UniformRandomPolicy: expected a Discrete or Box action space, got {action_space}"
            )
        self.action_space = action_space
        self._space = _copy_space(action_space)
        self._space.seed(int(seed))
        if isinstance(action_space, gymnasium.spaces.Discrete):
            self.action_probs = self._uniform_probs

    def __call__(self, obs):
        return self._space.sample()

    def _uniform_probs(self, obs) -> np.ndarray:
        num = int(self.action_space.n)
        return np.full(num, 1.0 / num)


def _copy_space(space):
    if isinstance(space, gymnasium.spaces.Discrete):
        return gymnasium.spaces.Discrete(int(space.n), start=int(space.start))
    return gymnasium.spaces.Box(space.low, space.high, dtype=space.dtype)


def sample_actions(probs, rng: np.random.Generator) -> np.ndarray:
    """One action index per row of (n, A) probabilities: (n,) int64.

    Inverse CDF with one uniform per row, the draws of ``rng.choice(A, p=row)``
    row after row (the same stream), vectorised.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"sample_actions: probs must have shape (n, A), got {probs.shape}")
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random(probs.shape[0])
    return np.minimum((u[:, None] >= cdf).sum(axis=1), probs.shape[1] - 1).astype(np.int64)


def is_stochastic(policy) -> bool:
    """Whether `policy` exposes ``action_probs(obs)``."""
    return callable(getattr(policy, "action_probs", None))


def check_action(action, action_space, where: str):
    """Validate one action: an int in range (Discrete) or a finite (a,) float array (Box)."""
    if isinstance(action_space, gymnasium.spaces.Discrete):
        arr = np.asarray(action)
        if arr.size != 1 or not (
            np.issubdtype(arr.dtype, np.integer) or float(arr.reshape(())) == round(float(arr))
        ):
            raise ValueError(
                f"{where}: expected an integer action for {action_space}, got {action!r}"
            )
        value = int(arr.reshape(()))
        if not action_space.contains(value):
            raise ValueError(f"{where}: action {value} is outside {action_space}")
        return value
    try:
        arr = np.asarray(action, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a float action array, got {action!r}") from None
    act_dim = int(np.prod(action_space.shape))
    if arr.size != act_dim:
        raise ValueError(
            f"{where}: expected an action with {act_dim} values for {action_space}, got {arr.size}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{where}: action contains NaN or infinite values: {arr}")
    return arr


def check_probs(probs, num_actions: int, where: str) -> np.ndarray:
    """Validate one probability vector (A,)."""
    try:
        p = np.asarray(probs, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected {num_actions} probabilities, got {probs!r}") from None
    if p.size != num_actions:
        raise ValueError(f"{where}: expected {num_actions} probabilities, got {p.size}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{where}: probabilities must be finite, got {p.tolist()}")
    return check_probability_rows(where, p[None])[0]


def policy_actions(policy: Policy, observations, action_space) -> np.ndarray:
    """``policy(s)`` for each row: (n, o) -> (n,) ints (Discrete) or (n, a) floats (Box)."""
    observations = np.asarray(observations, dtype=np.float64)
    out = [
        check_action(policy(obs), action_space, f"policy output for state {i}")
        for i, obs in enumerate(observations)
    ]
    if isinstance(action_space, gymnasium.spaces.Discrete):
        return np.asarray(out, dtype=np.int64).reshape(-1)
    return np.asarray(out, dtype=np.float64).reshape(len(out), -1)


def policy_probs(policy: Policy, observations, num_actions: int) -> np.ndarray:
    """``policy.action_probs(s)`` for each row: (n, o) -> (n, A)."""
    observations = np.asarray(observations, dtype=np.float64)
    rows = [
        check_probs(policy.action_probs(obs), num_actions, f"policy.action_probs for state {i}")
        for i, obs in enumerate(observations)
    ]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), num_actions)
