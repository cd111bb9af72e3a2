"""(state, action) features and `to_transitions`: `OfflineData` -> the `Transitions` of the core.

The Q-network input is ``x = (s, a)`` (paper sec. 3): the flattened
observation (``gymnasium.spaces.flatten``; its Box coordinates optionally
standardised with dataset statistics, its one-hot / 0-1 coordinates from
Discrete, MultiDiscrete and MultiBinary parts kept as they are) concatenated
with the action, one-hot for a Discrete space and raw or scaled to [-1, 1]
for a bounded Box space.

Shapes: n transitions, o observation features, a action features,
A discrete actions, d = o + A or o + a input features, k next inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium
import numpy as np

from ..data import Transitions, discounts
from .offline import OfflineData, infer_spaces
from .policies import is_stochastic, policy_actions, policy_probs, sampled_actions
from .spaces import box_mask, flat_dim

__all__ = ["Features", "to_transitions", "next_inputs"]


@dataclass(frozen=True, eq=False)
class Features:
    """Encoder of (state, action) pairs into network inputs x (d,).

    Attributes:
        obs_mean: (o,) subtracted from flat observations (zeros: raw).
        obs_scale: (o,) flat observations are divided by it (ones: raw).
        num_actions: A for a Discrete space (one-hot), else None.
        action_start: the Discrete space's first action.
        action_low, action_high: (a,) bounds mapped to [-1, 1] for a Box space,
            or None for raw Box actions.
        action_dim: a for a Box space.
    """

    obs_mean: np.ndarray
    obs_scale: np.ndarray
    num_actions: int | None = None
    action_start: int = 0
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None
    action_dim: int | None = None

    @classmethod
    def from_spaces(
        cls,
        observation_space: gymnasium.spaces.Space,
        action_space: gymnasium.spaces.Discrete | gymnasium.spaces.Box,
        standardize: OfflineData | None = None,
        scale_actions: bool = True,
    ) -> Features:
        """Choose the encoding from the spaces.

        Args:
            observation_space: any space of `tdntk.datasets.spaces` (Box,
                Discrete, MultiDiscrete, MultiBinary, nested Tuple/Dict),
                flattened to o = ``gymnasium.spaces.flatdim`` features.
            action_space: Discrete (one-hot) or Box (scaled to [-1, 1] when
                `scale_actions` and every bound is finite, raw otherwise).
            standardize: data whose observations and next observations give the
                mean and std that standardise the coordinates from Box parts of
                the observation (a constant feature keeps scale 1); one-hot and
                0/1 coordinates keep mean 0 and scale 1. None keeps all raw.
        """
        mean, scale = _observation_scaling(observation_space, standardize)
        if isinstance(action_space, gymnasium.spaces.Discrete):
            return cls(
                mean, scale, num_actions=int(action_space.n), action_start=int(action_space.start)
            )
        if isinstance(action_space, gymnasium.spaces.Box):
            low = np.asarray(action_space.low, np.float64).reshape(-1)
            high = np.asarray(action_space.high, np.float64).reshape(-1)
            bounded = np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)
            if scale_actions and bounded:
                return cls(mean, scale, action_low=low, action_high=high, action_dim=low.size)
            return cls(mean, scale, action_dim=low.size)
        raise ValueError(f"Features: action space must be Discrete or Box, got {action_space!r}")

    def __post_init__(self) -> None:
        for name in ("obs_mean", "obs_scale", "action_low", "action_high"):
            value = getattr(self, name)
            if value is not None:
                arr = np.array(value, dtype=np.float64).reshape(-1)
                arr.setflags(write=False)
                object.__setattr__(self, name, arr)
        if (self.num_actions is None) == (self.action_dim is None):
            raise ValueError(
                "Features: give exactly one of num_actions (Discrete) or action_dim (Box)"
            )

    @property
    def obs_dim(self) -> int:
        return self.obs_mean.size

    @property
    def discrete(self) -> bool:
        return self.num_actions is not None

    @property
    def dim(self) -> int:
        """d: input features of the Q-network."""
        return self.obs_dim + (self.num_actions if self.discrete else self.action_dim)

    def encode_observations(self, observations) -> np.ndarray:
        """(n, o) -> (n, o) standardised observations."""
        obs = np.asarray(observations, dtype=np.float64)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(
                f"Features: observations must have shape (n, {self.obs_dim}), got {obs.shape}"
            )
        return (obs - self.obs_mean) / self.obs_scale

    def encode_actions(self, actions) -> np.ndarray:
        """(n,) Discrete -> (n, A) one-hot; (n, a) Box -> (n, a) raw or scaled to [-1, 1]."""
        actions = np.asarray(actions)
        if self.discrete:
            if actions.ndim != 1:
                raise ValueError(f"Features: expected (n,) Discrete actions, got {actions.shape}")
            index = actions.astype(np.int64) - self.action_start
            if index.size and (index.min() < 0 or index.max() >= self.num_actions):
                raise ValueError(
                    f"Features: actions must lie in [{self.action_start}, "
                    f"{self.action_start + self.num_actions}), got range "
                    f"[{actions.min()}, {actions.max()}]"
                )
            return np.eye(self.num_actions)[index]
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise ValueError(
                f"Features: expected Box actions of shape (n, {self.action_dim}), "
                f"got {actions.shape}"
            )
        if self.action_low is None:
            return actions
        return 2.0 * (actions - self.action_low) / (self.action_high - self.action_low) - 1.0

    def encode(self, observations, actions) -> np.ndarray:
        """x = (standardised s, encoded a): (n, o), (n,) or (n, a) -> (n, d)."""
        obs = self.encode_observations(observations)
        act = self.encode_actions(actions)
        if act.shape[0] != obs.shape[0]:
            raise ValueError(f"Features: {obs.shape[0]} observations but {act.shape[0]} actions")
        return np.concatenate([obs, act], axis=1)

    def encode_all_actions(self, observations) -> np.ndarray:
        """Every Discrete action at each state: (n, o) -> (n, A, d); candidate j is action
        start + j."""
        if not self.discrete:
            raise ValueError("Features.encode_all_actions: only for a Discrete action space")
        obs = self.encode_observations(observations)
        n, a = obs.shape[0], self.num_actions
        x = np.empty((n, a, self.dim))
        x[:, :, : self.obs_dim] = obs[:, None, :]
        x[:, :, self.obs_dim :] = np.eye(a)[None, :, :]
        return x


def _observation_scaling(space, data: OfflineData | None) -> tuple[np.ndarray, np.ndarray]:
    """(mean (o,), scale (o,)): dataset statistics on Box coordinates (`spaces.box_mask`),
    0 and 1 elsewhere; all 0 and 1 without data."""
    o = flat_dim(space, "Features: observation space")
    mean, scale = np.zeros(o), np.ones(o)
    if data is None:
        return mean, scale
    if data.obs_dim != o:
        raise ValueError(
            f"Features: standardize data has {data.obs_dim} observation features "
            f"but the observation space {space} flattens to {o}"
        )
    both = np.concatenate([data.observations, data.next_observations])
    box = box_mask(space)
    mu, std = both.mean(axis=0), both.std(axis=0)
    mean = np.where(box, mu, 0.0)
    scale = np.where(box & (std > 1e-12 * np.maximum(1.0, np.abs(mu))), std, 1.0)
    return mean, scale


def next_inputs(
    observations,
    features: Features,
    policy=None,
    actions=None,
    action_probs=None,
    action_space=None,
    action_samples: int = 1,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The policy's inputs at states s: (x (n, k, d), weights (n, k) or None).

    One route is taken, in this order: a stochastic `policy` (with
    ``action_probs``, Discrete): every action, weighted by its probability;
    any other `policy` with ``action_samples`` K > 1: K sampled actions
    (`tdntk.datasets.policies.sampled_actions`), weights 1/K each (a stochastic
    policy over Box actions, or one without known probabilities); a
    deterministic `policy`: ``(s, policy(s))``; recorded `action_probs`
    (n, A): every action with those weights; recorded `actions`: ``(s, a)``.
    """
    obs = np.asarray(observations, dtype=np.float64)
    if int(action_samples) < 1:
        raise ValueError(f"action_samples must be >= 1, got {action_samples!r}")
    if policy is not None:
        if features.discrete and is_stochastic(policy):
            return features.encode_all_actions(obs), policy_probs(policy, obs, features.num_actions)
        if action_space is None:
            raise ValueError("next_inputs: a deterministic policy needs the action_space")
        if int(action_samples) > 1:
            k = int(action_samples)
            drawn = sampled_actions(policy, obs, action_space, k)  # (n, K) or (n, K, a)
            n = obs.shape[0]
            flat = drawn.reshape((n * k,) + drawn.shape[2:])
            x = features.encode(np.repeat(obs, k, axis=0), flat).reshape(n, k, features.dim)
            return x, np.full((n, k), 1.0 / k)
        chosen = policy_actions(policy, obs, action_space)
        return features.encode(obs, chosen)[:, None, :], None
    if action_probs is not None:
        return features.encode_all_actions(obs), np.asarray(action_probs, dtype=np.float64)
    if actions is not None:
        return features.encode(obs, actions)[:, None, :], None
    raise ValueError(
        "no policy given and the data records neither next_actions nor next_action_probs: "
        "pass the policy to evaluate"
    )


def to_transitions(
    data: OfflineData,
    features: Features,
    gamma: float,
    policy=None,
    action_space=None,
    action_samples: int = 1,
) -> Transitions:
    """`Transitions` for evaluating `policy` (or the behaviour policy) from `data`.

    ``x_i = features(s_i, a_i)``; discount ``g_i = gamma * (1 - terminated_i)``
    (a truncated transition keeps gamma; theory page, Conventions). Next inputs X''
    (see `next_inputs`): from ``policy`` when given (stochastic: all actions
    weighted by ``policy.action_probs`` as ``next_weights``, the P of the
    theory page; deterministic: ``policy(s')``), otherwise from the recorded
    next_action_probs or next_actions, which evaluates the behaviour policy
    (SARSA-style).

    Args:
        action_space: for a deterministic `policy`; defaults to the data's
            action space (or one inferred from the data).
        action_samples: K > 1 draws K next actions per transition from a policy
            without ``action_probs`` (weights 1/K; see `next_inputs`).
    """
    if not isinstance(data, OfflineData):
        raise TypeError(f"to_transitions: data must be an OfflineData, got {type(data).__name__}")
    if features.obs_dim != data.obs_dim:
        raise ValueError(
            f"to_transitions: features expect {features.obs_dim} observation features, "
            f"data has {data.obs_dim}"
        )
    if action_space is None:
        action_space = infer_spaces(data)[1]
    x = features.encode(data.observations, data.actions)
    x_next, weights = next_inputs(
        data.next_observations,
        features,
        policy=policy,
        actions=data.next_actions,
        action_probs=data.next_action_probs,
        action_space=action_space,
        action_samples=action_samples,
    )
    return Transitions(x, data.rewards, x_next, discounts(gamma, data.terminated), weights)
