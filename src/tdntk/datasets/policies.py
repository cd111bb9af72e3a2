"""Policies: loading them (``PKG.MODULE:FUNC``, ``path/file.py:FUNC``, ``sb3:...``), the
random policy, and applying a policy to a batch of states.

A policy is a callable ``policy(obs (o,)) -> action`` (an int for a Discrete
action space, an (a,) array for a Box one); ``obs`` is the observation
flattened with ``gymnasium.spaces.flatten`` (one-hot for a Discrete
observation space), as stored in `OfflineData`. Optional attributes:

* ``policy.action_probs(obs) -> (A,)`` (Discrete actions): a stochastic policy
  with known probabilities; `collect` samples from them and `to_transitions`
  uses them as the next-action weights (the stochastic form on the theory page);
* ``policy.batched = True``: the policy (and its ``action_probs``) takes a
  batch ``(n, o)`` and returns ``(n,)`` / ``(n, a)`` actions (``(n, A)``
  probabilities) in one call;
* ``policy.sample(obs) -> action``: one random draw of a stochastic policy
  without known probabilities (e.g. a Gaussian over Box actions); with
  ``action_samples`` K > 1, `sampled_actions` draws K actions per state with
  it (or by calling the policy K times when it has no ``sample``).

``PKG.MODULE`` is imported from the current folder too (as ``python -m``
would). ``sb3:ALGO:path/model.zip`` (or ``sb3:path/model.zip``, the algorithm
read from the file) loads a Stable-Baselines3 model (an optional extra:
``pip install stable-baselines3``, which brings torch) and wraps it in
`ModelPolicy`: ``model.predict(obs, deterministic=True)``, batched, with
observations unflattened to the model's observation space.

Shapes: n states, o observation features, a action features, A actions,
K sampled actions per state.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import gymnasium
import numpy as np

from ..data import check_probability_rows

__all__ = [
    "load_policy",
    "load_model_policy",
    "ModelPolicy",
    "UniformRandomPolicy",
    "is_stochastic",
    "is_batched",
    "sample_actions",
    "policy_actions",
    "policy_probs",
    "sampled_actions",
    "cwd_on_path",
]

SB3_ALGORITHMS = ("PPO", "A2C", "DQN", "SAC", "TD3", "DDPG")

Policy = Callable[[np.ndarray], object]


def load_policy(spec: str) -> Policy:
    """Import a policy from ``PKG.MODULE:FUNC``, ``path/to/file.py:FUNC`` or an ``sb3:`` spec.

    FUNC may be dotted (``module:Class.attr``). The object must be callable.
    ``PKG.MODULE`` is looked up on ``sys.path`` and then in the current folder.
    ``sb3:ALGO:path/model.zip`` / ``sb3:path/model.zip``: `load_model_policy`.

    Raises:
        ValueError: malformed spec, module or attribute not found, not callable
            (the message names the spec and what failed).
    """
    if isinstance(spec, str) and spec.startswith("sb3:"):
        return load_model_policy(spec)
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(
            f"policy {spec!r}: expected 'PKG.MODULE:FUNC', 'path/to/file.py:FUNC' or "
            "'sb3:ALGO:path/model.zip'"
        )
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


@contextlib.contextmanager
def cwd_on_path():
    """The current folder on ``sys.path`` for the duration (as ``python -m`` has it), so
    ``module:FUNC`` and ``module:EnvId`` find modules next to the user; removed after."""
    cwd = os.getcwd()
    present = any(os.path.abspath(p or os.curdir) == cwd for p in sys.path)
    if not present:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if not present:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


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
    with cwd_on_path():
        return importlib.import_module(module_name)


# ---------------------------------------------------------------------- models (SB3)
class ModelPolicy:
    """A policy from a model with ``predict(obs, deterministic=...) -> (actions, state)``
    (the Stable-Baselines3 interface), batched.

    Observations arrive flattened (`OfflineData`'s form); when the model has an
    ``observation_space`` they are unflattened to it (a Discrete space gives the
    integer state), else passed as they are.

    Args:
        model: the model (duck-typed: only ``predict`` and optionally
            ``observation_space`` are used).
        deterministic: what ``__call__`` passes to ``predict``; `sample` always
            draws with ``deterministic=False``.
    """

    batched = True

    def __init__(self, model, deterministic: bool = True, name: str = "model"):
        if not callable(getattr(model, "predict", None)):
            raise ValueError(f"{name}: the model has no predict(obs, deterministic=...) method")
        self.model = model
        self.deterministic = bool(deterministic)
        self.name = name

    def _obs(self, observations):
        obs = np.asarray(observations, dtype=np.float64)
        single = obs.ndim == 1
        batch = obs[None] if single else obs
        space = getattr(self.model, "observation_space", None)
        if isinstance(space, gymnasium.spaces.Space):
            rows = [gymnasium.spaces.unflatten(space, row) for row in batch]
            if isinstance(space, gymnasium.spaces.Discrete | gymnasium.spaces.Box):
                batch = np.stack([np.asarray(r) for r in rows])
            else:  # Tuple / Dict: the model takes one structured observation at a time
                return rows, single, True
        return batch, single, False

    def _predict(self, observations, deterministic: bool):
        batch, single, rowwise = self._obs(observations)
        if rowwise:
            out = np.stack(
                [np.asarray(self.model.predict(r, deterministic=deterministic)[0]) for r in batch]
            )
        else:
            out = np.asarray(self.model.predict(batch, deterministic=deterministic)[0])
        return out[0] if single else out

    def __call__(self, observations):
        return self._predict(observations, self.deterministic)

    def sample(self, observations):
        """One random draw per observation (``predict(..., deterministic=False)``)."""
        return self._predict(observations, False)

    def __repr__(self):
        return f"ModelPolicy({self.name})"


def _sb3_algorithm(path: Path) -> str:
    """The algorithm of an SB3 .zip from its stored policy class module
    (``stable_baselines3.<algo>.policies``), or ValueError."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data").decode())
        module = data["policy_class"]["__module__"]
    except Exception as err:  # not a zip, no data file, another layout
        raise ValueError(
            f"cannot tell the algorithm of {path} ({type(err).__name__}: {err}); "
            f"name it: sb3:ALGO:{path} with ALGO one of {', '.join(SB3_ALGORITHMS)}"
        ) from None
    parts = str(module).split(".")
    if parts[0] in ("stable_baselines3", "sb3_contrib") and len(parts) > 2:
        if parts[1] != "common":
            return parts[1].upper()
    raise ValueError(
        f"cannot tell the algorithm of {path} from its policy class module {module!r} (e.g. "
        f"ActorCriticPolicy is shared by PPO and A2C); name it: sb3:ALGO:{path}"
    )


def load_model_policy(spec: str) -> ModelPolicy:
    """A `ModelPolicy` from ``sb3:ALGO:path/model.zip`` or ``sb3:path/model.zip``.

    Imports ``stable_baselines3`` (then ``sb3_contrib``) only here; ALGO is a class
    there (PPO, A2C, DQN, SAC, TD3, DDPG, ...), read from the file when omitted.
    Actions are ``model.predict(obs, deterministic=True)``.

    Raises:
        ValueError: Stable-Baselines3 is not installed, the file or the algorithm is
            missing, or loading fails (the message says which).
    """
    rest = spec[len("sb3:") :]
    algo, _, path_text = rest.partition(":")
    if not path_text:  # sb3:path
        algo, path_text = "", rest
    path = Path(path_text)
    if not path.is_file():
        raise ValueError(f"policy {spec!r}: model file {path} does not exist")
    try:
        import stable_baselines3  # noqa: F401  (optional extra)
    except ImportError:
        raise ValueError(
            f"policy {spec!r}: loading a Stable-Baselines3 model needs the optional package "
            "stable-baselines3 (pip install stable-baselines3; it brings torch)"
        ) from None
    algo = algo or _sb3_algorithm(path)
    cls = None
    for package in ("stable_baselines3", "sb3_contrib"):
        try:
            cls = getattr(importlib.import_module(package), algo, None)
        except ImportError:
            continue
        if cls is not None:
            break
    if cls is None or not callable(getattr(cls, "load", None)):
        raise ValueError(
            f"policy {spec!r}: no algorithm {algo!r} in stable_baselines3 or sb3_contrib "
            f"(e.g. {', '.join(SB3_ALGORITHMS)})"
        )
    try:
        model = cls.load(str(path), device="cpu")
    except Exception as err:  # SB3's own errors: a wrong algorithm, a corrupt file
        raise ValueError(
            f"policy {spec!r}: {algo}.load failed ({type(err).__name__}: {err})"
        ) from None
    return ModelPolicy(model, deterministic=True, name=spec)


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


def is_batched(policy) -> bool:
    """Whether `policy` says it takes (n, o) batches (``policy.batched = True``)."""
    return getattr(policy, "batched", False) is True


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


def _check_actions(out, action_space, observations, where: str) -> np.ndarray:
    """Validate one action per row: (n,) ints (Discrete) or (n, a) floats (Box)."""
    n = observations.shape[0]
    discrete = isinstance(action_space, gymnasium.spaces.Discrete)
    arr = np.asarray(out)
    width = 1 if discrete else int(np.prod(action_space.shape))
    if arr.size != n * width or (arr.ndim >= 1 and arr.shape[0] != n and n > 1):
        want = f"({n},)" if discrete else f"({n}, {width})"
        raise ValueError(
            f"{where}: a batched policy must return one action per state, {want}, "
            f"got shape {arr.shape}"
        )
    rows = arr.reshape(n, width)
    out = [
        check_action(row[0] if discrete else row, action_space, f"{where}, state {i}")
        for i, row in enumerate(rows)
    ]
    if discrete:
        return np.asarray(out, dtype=np.int64).reshape(-1)
    return np.asarray(out, dtype=np.float64).reshape(n, -1)


def policy_actions(policy: Policy, observations, action_space) -> np.ndarray:
    """``policy(s)`` for each row: (n, o) -> (n,) ints (Discrete) or (n, a) floats (Box).

    A batched policy (``policy.batched = True``) is called once with the (n, o) batch.
    """
    observations = np.asarray(observations, dtype=np.float64)
    if is_batched(policy):
        return _check_actions(policy(observations), action_space, observations, "policy output")
    out = [
        check_action(policy(obs), action_space, f"policy output for state {i}")
        for i, obs in enumerate(observations)
    ]
    if isinstance(action_space, gymnasium.spaces.Discrete):
        return np.asarray(out, dtype=np.int64).reshape(-1)
    return np.asarray(out, dtype=np.float64).reshape(len(out), -1)


def sampled_actions(policy: Policy, observations, action_space, k: int) -> np.ndarray:
    """K draws of a stochastic policy at each row: (n, K) ints or (n, K, a) floats.

    Each draw is ``policy.sample(obs)`` when the policy has ``sample``, else
    ``policy(obs)`` (a policy that samples when called); batched policies are
    called once per draw with the whole batch. Draw j of every state comes from
    the j-th call, so the policy's own random state decides reproducibility.
    """
    if int(k) < 1:
        raise ValueError(f"action_samples must be >= 1, got {k!r}")
    draw = getattr(policy, "sample", None)
    draw = draw if callable(draw) else policy

    class _Draw:
        batched = is_batched(policy)

        def __call__(self, obs):
            return draw(obs)

    draws = [policy_actions(_Draw(), observations, action_space) for _ in range(int(k))]
    return np.stack(draws, axis=1)


def policy_probs(policy: Policy, observations, num_actions: int) -> np.ndarray:
    """``policy.action_probs(s)`` for each row: (n, o) -> (n, A) (one call when batched)."""
    observations = np.asarray(observations, dtype=np.float64)
    if is_batched(policy):
        probs = np.asarray(policy.action_probs(observations), dtype=np.float64)
        n = observations.shape[0]
        if probs.shape != (n, num_actions):
            raise ValueError(
                f"policy.action_probs: a batched policy must return ({n}, {num_actions}) "
                f"probabilities, got shape {probs.shape}"
            )
        return np.stack(
            [check_probs(p, num_actions, f"policy.action_probs for state {i}")
             for i, p in enumerate(probs)]
        ).reshape(n, num_actions)  # fmt: skip
    rows = [
        check_probs(policy.action_probs(obs), num_actions, f"policy.action_probs for state {i}")
        for i, obs in enumerate(observations)
    ]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), num_actions)
