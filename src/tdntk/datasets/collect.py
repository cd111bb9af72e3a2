"""`collect`: roll a policy out in any Gymnasium environment and log `OfflineData`.

Gymnasium semantics are kept: ``terminated`` (s' is terminal) and
``truncated`` (the episode was cut, s' is not terminal) are recorded apart,
and the environment is reset after either. The policy's action at s' is
recorded for every transition (also the last one of an episode), so the
behaviour policy can be evaluated later (SARSA-style). The last transition
of the data is marked truncated when its episode did not end there.

Observations are flattened with ``gymnasium.spaces.flatten(observation_space,
obs)`` (a Discrete space gives one-hot rows, a Tuple/Dict its parts
concatenated) and the policy is called with that flat (o,) float64 vector;
the data keeps the environment's original observation space
(``gymnasium.spaces.unflatten`` recovers an observation).
"""

from __future__ import annotations

import gymnasium
import numpy as np

from .offline import REQUIRED_ARRAYS, OfflineData
from .policies import (
    UniformRandomPolicy,
    check_action,
    check_probs,
    cwd_on_path,
    is_stochastic,
    sample_actions,
)
from .spaces import check_space, flatten_one

__all__ = ["collect", "make_env", "check_spaces"]


def make_env(env) -> gymnasium.Env:
    """`gymnasium.make(env)` for an id (``"CartPole-v1"`` or ``"module:EnvId"``), or `env` itself.

    The module of ``module:EnvId`` is also looked up in the current folder.

    Raises:
        ValueError: unknown environment id (with Gymnasium's suggestion).
    """
    if isinstance(env, gymnasium.Env):
        return env
    if not isinstance(env, str):
        raise TypeError(f"env must be a Gymnasium id or a gymnasium.Env, got {type(env).__name__}")
    try:
        with cwd_on_path():
            return gymnasium.make(env)
    except gymnasium.error.Error as err:
        raise ValueError(f"unknown Gymnasium environment {env!r}: {err}") from None
    except ModuleNotFoundError as err:
        raise ValueError(f"cannot make Gymnasium environment {env!r}: {err}") from None


def check_spaces(env: gymnasium.Env) -> None:
    """Require an observation space that flattens to a vector (`spaces.check_space`) and a
    Discrete or Box action space."""
    check_space(env.observation_space, "collect: the environment's observation space")
    if not isinstance(env.action_space, gymnasium.spaces.Discrete | gymnasium.spaces.Box):
        raise ValueError(
            "collect: the environment's action space must be Discrete or Box, "
            f"got {env.action_space}"
        )


class _Actor:
    """Chooses actions: a deterministic policy directly, a stochastic one by sampling
    its ``action_probs`` with a seeded generator."""

    def __init__(self, policy, action_space, seed: int):
        self.policy = policy
        self.space = action_space
        self.stochastic = is_stochastic(policy) and isinstance(
            action_space, gymnasium.spaces.Discrete
        )
        self.rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))

    def act(self, obs: np.ndarray, index: int):
        """(action, probs (A,) or None) at one flat (o,) observation."""
        where = f"policy at step {index}"
        if not self.stochastic:
            return check_action(self.policy(obs), self.space, where), None
        probs = check_probs(self.policy.action_probs(obs), int(self.space.n), where)
        choice = int(sample_actions(probs[None], self.rng)[0])
        return int(self.space.start) + choice, probs


def collect(
    env,
    policy=None,
    n_transitions: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> OfflineData:
    """Collect `n_transitions` transitions of `policy` in `env`.

    Args:
        env: a Gymnasium id (``"CartPole-v1"``, ``"module:EnvId"``) or a
            ``gymnasium.Env`` whose observation space is Box, Discrete,
            MultiDiscrete, MultiBinary or a (nested) Tuple/Dict of these, and
            whose action space is Discrete or Box.
        policy: ``policy(obs (o,)) -> action``, called with the flattened
            observation (``gymnasium.spaces.flatten``); None is uniformly random over
            the action space (seeded). A policy with ``action_probs(obs) -> (A,)``
            (Discrete actions) is sampled from those probabilities with a seeded
            generator, and they are recorded as ``next_action_probs``.
        n_transitions: number of transitions n (>= 1).
        seed: seeds the first ``env.reset``, the action space and the sampler,
            so the same seed gives the same data.
        progress: show a progress bar.

    Returns:
        `OfflineData` with flattened observations, next_actions (and
        next_action_probs for a stochastic Discrete policy), episode ids and the
        environment's (unflattened) spaces.
    """
    n_transitions = int(n_transitions)
    if n_transitions < 1:
        raise ValueError(f"n_transitions must be >= 1, got {n_transitions}")
    env = make_env(env)
    check_spaces(env)
    action_space = env.action_space
    if policy is None:
        policy = UniformRandomPolicy(action_space, seed=seed)
    if not callable(policy):
        raise TypeError(f"policy must be callable policy(obs), got {type(policy).__name__}")
    actor = _Actor(policy, action_space, seed)
    env.action_space.seed(int(seed))
    columns = _rollout(env, actor, n_transitions, seed, progress)
    return OfflineData(
        **columns, observation_space=env.observation_space, action_space=action_space
    )


def _rollout(env, actor: _Actor, n: int, seed: int, progress: bool) -> dict:
    rows: dict[str, list] = {k: [] for k in (*REQUIRED_ARRAYS, "next_actions", "episode_ids")}
    probs_rows: list = []
    bar = _progress(n, progress)
    space = env.observation_space
    obs, _ = env.reset(seed=int(seed))
    obs = flatten_one(space, obs)
    action, probs = actor.act(obs, 0)
    episode = 0
    for i in range(n):
        next_obs, reward, terminated, truncated, _ = env.step(_env_action(action, env))
        next_obs = flatten_one(space, next_obs)
        next_action, next_probs = actor.act(next_obs, i + 1)
        ends = bool(terminated) or bool(truncated)
        last = i == n - 1
        for key, value in (
            ("observations", obs),
            ("actions", action),
            ("rewards", float(reward)),
            ("next_observations", next_obs),
            ("terminated", bool(terminated)),
            ("truncated", bool(truncated) or (last and not ends)),
            ("next_actions", next_action),
            ("episode_ids", episode),
        ):
            rows[key].append(value)
        if next_probs is not None:
            probs_rows.append(next_probs)
        bar.update(1)
        if ends and not last:
            obs, _ = env.reset()
            obs = flatten_one(space, obs)
            action, probs = actor.act(obs, i + 1)
            episode += 1
        else:
            obs, action = next_obs, next_action
    bar.close()
    columns = {k: np.asarray(v) for k, v in rows.items()}
    columns["next_action_probs"] = np.asarray(probs_rows) if probs_rows else None
    return columns


def _env_action(action, env):
    if isinstance(env.action_space, gymnasium.spaces.Discrete):
        return int(action)
    return np.asarray(action, dtype=env.action_space.dtype).reshape(env.action_space.shape)


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="collect", unit="step")


class _NoBar:
    def update(self, k: int) -> None:
        pass

    def close(self) -> None:
        pass
