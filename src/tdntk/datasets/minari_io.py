"""Read Minari datasets (the Farama standard for offline RL) stored locally, never downloading.

A Minari episode of T steps holds observations (T + 1, ...), actions (T, ...),
rewards, terminations and truncations (T,). Its transitions are
``(obs[t], act[t], rew[t], obs[t + 1])`` with ``next_action = act[t + 1]``.
At the last step the next action was never taken: for a terminated episode it
does not matter (the discount is 0) and the step's own action fills it; for a
truncated one it comes from `behaviour_policy` when given, otherwise that
transition is dropped (its bootstrap target is unknown).

Any observation space of `tdntk.datasets.spaces` is read (Minari stores a
Tuple/Dict observation as a tuple/dict of arrays per episode): every step is
flattened with Gymnasium's utilities (`spaces.flatten_batch`) and the
dataset's original space is kept.

Requires ``pip install 'minari[hdf5]'`` (or the storage backend the dataset uses).
"""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium
import numpy as np

from .offline import OfflineData
from .policies import policy_actions
from .spaces import check_space, flatten_batch

__all__ = ["load_minari"]


def _open_dataset(dataset_id_or_path):
    try:
        import minari
    except ImportError as err:
        raise ImportError(
            f"load_minari needs the minari package ({err}); pip install 'minari[hdf5]'"
        ) from None
    path = Path(os.fspath(dataset_id_or_path))
    try:
        if path.is_dir():
            data_dir = path / "data" if (path / "data" / "metadata.json").is_file() else path
            if not (data_dir / "metadata.json").is_file():
                raise ValueError(
                    f"Minari dataset folder {path} has no metadata.json (nor data/metadata.json)"
                )
            return minari.MinariDataset(str(data_dir))
        return minari.load_dataset(str(dataset_id_or_path), download=False)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"Minari dataset {str(dataset_id_or_path)!r} not found locally ({err}); "
            "tdntk never downloads: set MINARI_DATASETS_PATH or give the dataset folder"
        ) from None
    except (ImportError, ModuleNotFoundError) as err:
        raise ImportError(
            f"Minari dataset {str(dataset_id_or_path)!r} needs a storage backend ({err}); "
            "pip install 'minari[hdf5]'"
        ) from None


def load_minari(dataset_id_or_path, behaviour_policy=None) -> OfflineData:
    """Read a locally stored Minari dataset as `OfflineData`.

    Args:
        dataset_id_or_path: a dataset id resolved under ``MINARI_DATASETS_PATH``
            (default ``~/.minari/datasets``), or the dataset's folder.
        behaviour_policy: optional ``policy(obs) -> action`` that fills the next
            action after the last step of truncated episodes; without it those
            transitions are dropped.

    Returns:
        `OfflineData` with flattened observations, next_actions, episode ids
        (Minari's) and the dataset's (unflattened) spaces.
    """
    dataset = _open_dataset(dataset_id_or_path)
    obs_space = dataset.observation_space
    check_space(obs_space, "load_minari: the dataset's observation space")
    act_space = dataset.action_space
    if not isinstance(act_space, gymnasium.spaces.Discrete | gymnasium.spaces.Box):
        raise ValueError(f"load_minari: the action space must be Discrete or Box, got {act_space}")
    parts = [
        _episode_columns(ep, obs_space, act_space, behaviour_policy)
        for ep in dataset.iterate_episodes()
    ]
    parts = [p for p in parts if p["rewards"].size]
    if not parts:
        raise ValueError(f"Minari dataset {str(dataset_id_or_path)!r} holds no usable transitions")
    columns = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return OfflineData(**columns, observation_space=obs_space, action_space=act_space)


def _episode_columns(
    episode, observation_space, action_space, behaviour_policy
) -> dict[str, np.ndarray]:
    """One episode's transitions; observations (steps + 1, o) flattened."""
    steps = len(episode.rewards)
    obs = flatten_batch(observation_space, episode.observations, steps + 1)
    if isinstance(action_space, gymnasium.spaces.Discrete):
        actions = np.asarray(episode.actions).astype(np.int64).reshape(steps)
    else:
        actions = np.asarray(episode.actions, dtype=np.float64).reshape(steps, -1)
    terminated = np.asarray(episode.terminations, dtype=bool).reshape(steps)
    truncated = np.asarray(episode.truncations, dtype=bool).reshape(steps)
    next_actions = np.concatenate([actions[1:], actions[-1:]])
    keep = np.ones(steps, dtype=bool)
    if steps and not terminated[-1]:
        if behaviour_policy is not None:
            next_actions[-1] = policy_actions(behaviour_policy, obs[-1:], action_space)[0]
        else:
            keep[-1] = False
    return {
        "observations": obs[:-1][keep],
        "actions": actions[keep],
        "rewards": np.asarray(episode.rewards, dtype=np.float64).reshape(steps)[keep],
        "next_observations": obs[1:][keep],
        "terminated": terminated[keep],
        "truncated": truncated[keep],
        "next_actions": next_actions[keep],
        "episode_ids": np.full(int(keep.sum()), int(episode.id), dtype=np.int64),
    }
