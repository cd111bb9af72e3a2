"""`OfflineData`: logged transitions of any Gymnasium environment, and their `.npz` format.

Shapes: n transitions, o observation features (the observation flattened
with ``gymnasium.spaces.flatten``; o = ``flatdim(observation_space)``),
a action features (Box actions), A discrete actions.

The on-disk format (docs/datasets.md) is a NumPy ``.npz`` archive with one
array per field of `OfflineData` (same names), plus optional space
descriptions and ``format_version``. Version 2 (written now) describes the
spaces as JSON strings (``observation_space_json``, ``action_space_json``;
see `tdntk.datasets.spaces.space_to_json`); version 1 files
(``observation_low``/``observation_high`` of a Box, ``action_n`` and
``action_start`` for a Discrete action space, ``action_low``/``action_high``
for a Box one) are still read. Arrays are read with ``allow_pickle=False``.
Files with D4RL's names read too (`D4RL_NAMES`): ``terminals`` as
``terminated`` and ``timeouts`` as ``truncated`` (D4RL's ``infos/...`` and
``metadata/...`` arrays are then ignored).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import gymnasium
import numpy as np

from .. import files
from ..data import check_probability_rows
from .spaces import flat_dim, space_from_json, space_to_json

__all__ = [
    "OfflineData",
    "FORMAT_VERSION",
    "REQUIRED_ARRAYS",
    "OPTIONAL_ARRAYS",
    "save_npz",
    "load_npz",
    "infer_spaces",
    "D4RL_NAMES",
]

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
REQUIRED_ARRAYS = (
    "observations",
    "actions",
    "rewards",
    "next_observations",
    "terminated",
    "truncated",
)
OPTIONAL_ARRAYS = ("next_actions", "next_action_probs", "episode_ids")
_V1_SPACE_ARRAYS = (
    "observation_low",
    "observation_high",
    "action_n",
    "action_start",
    "action_low",
    "action_high",
)
_V2_SPACE_ARRAYS = ("observation_space_json", "action_space_json")
_SPACE_ARRAYS = {1: _V1_SPACE_ARRAYS, 2: _V2_SPACE_ARRAYS}
# D4RL (Fu et al., "D4RL: Datasets for Deep Data-Driven Reinforcement Learning", 2020) names
# -> ours: `terminals` marks a true terminal state, `timeouts` a time-limit cut.
D4RL_NAMES = {"terminals": "terminated", "timeouts": "truncated"}
_D4RL_IGNORED_PREFIXES = ("infos/", "metadata/")


def _finite_float(name: str, value, ndim: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"OfflineData.{name}: cannot convert to a float array ({err})") from None
    if arr.ndim not in ndim:
        want = " or ".join(f"{k}-D" for k in ndim)
        raise ValueError(f"OfflineData.{name}: expected a {want} array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1))
        raise ValueError(
            f"OfflineData.{name}: contains NaN or infinite values "
            f"({bad.size} row(s), first at index {int(bad[0])})"
        )
    return arr


def _bool_vector(name: str, value) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"OfflineData.{name}: expected shape (n,), got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if arr.size and not np.all(np.isin(arr, (0, 1))):
            raise ValueError(f"OfflineData.{name}: expected booleans (or 0/1), got {arr.dtype}")
        arr = arr.astype(bool)
    return arr.copy()


def _actions(name: str, value, discrete: bool | None) -> np.ndarray:
    """(n,) integers (Discrete) or (n, a) floats (Box)."""
    arr = np.asarray(value)
    if arr.ndim == 1 and (discrete is None or discrete):
        if np.issubdtype(arr.dtype, np.integer):
            return arr.astype(np.int64)
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
        raise ValueError(
            f"OfflineData.{name}: a 1-D action array must hold integers (Discrete actions); "
            f"got dtype {arr.dtype}. Box actions need shape (n, action_dim)"
        )
    if discrete:
        raise ValueError(
            f"OfflineData.{name}: expected (n,) integer actions like `actions`, "
            f"got shape {arr.shape}"
        )
    return _finite_float(name, arr, (2,))


@dataclass(frozen=True, eq=False)
class OfflineData:
    """Logged transitions (s, a, r, s') with Gymnasium's terminated/truncated flags.

    Args:
        observations: (n, o) states s, flattened with
            ``gymnasium.spaces.flatten(observation_space, obs)`` (a Discrete
            space gives one-hot rows; Tuple/Dict their parts concatenated).
        actions: (n,) integer actions (Discrete) or (n, a) float actions (Box).
        rewards: (n,) rewards.
        next_observations: (n, o) next states s'.
        terminated: (n,) True where s' is terminal (the value after it is 0).
        truncated: (n,) True where the episode was cut after this step (time
            limit or end of the data); s' is not terminal.
        next_actions: optional, like `actions`: the behaviour policy's action at
            s' (recorded for every transition, the last of an episode too).
        next_action_probs: optional (n, A): the behaviour policy's action
            probabilities at s' (Discrete actions only).
        episode_ids: (n,) integer episode of each transition; None numbers the
            episodes from the terminated/truncated flags.
        observation_space: optional space the observations came from, unflattened
            (Box, Discrete, MultiDiscrete, MultiBinary, or Tuple/Dict of these);
            ``gymnasium.spaces.flatdim`` of it must equal o.
        action_space: optional Discrete or Box the actions came from.

    Validated on construction (errors name the field); at least one
    transition is required. Arrays are copied and read-only. Float arrays are
    float64.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    next_actions: np.ndarray | None = None
    next_action_probs: np.ndarray | None = None
    episode_ids: np.ndarray | None = None
    observation_space: gymnasium.spaces.Space | None = None
    action_space: gymnasium.spaces.Discrete | gymnasium.spaces.Box | None = None

    def __post_init__(self):
        _check_not_empty(self.observations)
        obs = _finite_float("observations", self.observations, (2,))
        n, o = obs.shape
        next_obs = _finite_float("next_observations", self.next_observations, (2,))
        actions = _actions("actions", self.actions, None)
        discrete = actions.ndim == 1
        rewards = _finite_float("rewards", self.rewards, (1,))
        terminated = _bool_vector("terminated", self.terminated)
        truncated = _bool_vector("truncated", self.truncated)
        values = {
            "observations": obs,
            "actions": actions,
            "rewards": rewards,
            "next_observations": next_obs,
            "terminated": terminated,
            "truncated": truncated,
        }
        if self.next_actions is not None:
            values["next_actions"] = _actions("next_actions", self.next_actions, discrete)
        if self.next_action_probs is not None:
            if not discrete:
                raise ValueError(
                    "OfflineData.next_action_probs: only for Discrete actions, "
                    f"but actions have shape {actions.shape} (Box)"
                )
            values["next_action_probs"] = _probabilities(self.next_action_probs)
        if self.episode_ids is None:
            values["episode_ids"] = _episodes_from_flags(terminated, truncated)
        else:
            ids = np.asarray(self.episode_ids)
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(
                    "OfflineData.episode_ids: expected (n,) integers, "
                    f"got dtype {ids.dtype} shape {ids.shape}"
                )
            values["episode_ids"] = ids.astype(np.int64)
        for name, arr in values.items():
            if arr.shape[0] != n:
                raise ValueError(
                    f"OfflineData.{name}: has {arr.shape[0]} rows but observations has {n} "
                    "(every array needs one row per transition)"
                )
        if next_obs.shape[1] != o:
            raise ValueError(
                f"OfflineData.next_observations: has {next_obs.shape[1]} features per state "
                f"but observations has {o}"
            )
        if "next_actions" in values and values["next_actions"].shape[1:] != actions.shape[1:]:
            raise ValueError(
                f"OfflineData.next_actions: shape {values['next_actions'].shape} does not match "
                f"actions {actions.shape}"
            )
        _check_spaces(self.observation_space, self.action_space, values)
        for name, arr in values.items():
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    # ------------------------------------------------------------------ shapes
    @property
    def n(self) -> int:
        """Number of transitions."""
        return self.observations.shape[0]

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def discrete(self) -> bool:
        """True for integer (Discrete) actions, False for (n, a) Box actions."""
        return self.actions.ndim == 1

    @property
    def num_episodes(self) -> int:
        return int(np.unique(self.episode_ids).size)

    # ------------------------------------------------------------------ selection
    def subset(self, index) -> OfflineData:
        """The transitions at `index` (integer array or boolean mask), spaces kept."""
        index = np.asarray(index)
        arrays = {
            f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
            for f in fields(self)
            if f.name not in ("observation_space", "action_space")
        }
        return replace(self, **arrays)

    def subsample(self, max_transitions: int, seed: int = 0) -> OfflineData:
        """At most `max_transitions` transitions drawn without replacement, reproducibly.

        The chosen indices are ``sorted(default_rng(seed).choice(n, max_transitions))``;
        all transitions are kept when n <= max_transitions.
        """
        if int(max_transitions) < 1:
            raise ValueError(f"max_transitions must be >= 1, got {max_transitions!r}")
        if self.n <= max_transitions:
            return self
        rng = np.random.default_rng(seed)
        index = np.sort(rng.choice(self.n, size=int(max_transitions), replace=False))
        return self.subset(index)


def _check_not_empty(observations) -> None:
    shape = np.shape(observations)
    if len(shape) >= 1 and shape[0] == 0:
        raise ValueError(
            f"OfflineData.observations: the dataset is empty (0 transitions, shape {shape}); "
            "give at least one transition"
        )


def _probabilities(value) -> np.ndarray:
    probs = _finite_float("next_action_probs", value, (2,))
    return check_probability_rows("OfflineData.next_action_probs", probs)


def _episodes_from_flags(terminated: np.ndarray, truncated: np.ndarray) -> np.ndarray:
    """Episode k starts after the k-th transition with terminated or truncated set."""
    ends = (terminated | truncated).astype(np.int64)
    return np.concatenate([[0], np.cumsum(ends)[:-1]]).astype(np.int64) if ends.size else ends


def _check_spaces(observation_space, action_space, values) -> None:
    obs = values["observations"]
    if observation_space is not None:
        dim = flat_dim(observation_space, "OfflineData.observation_space")
        if dim != obs.shape[1]:
            raise ValueError(
                f"OfflineData.observation_space: {observation_space} flattens to {dim} "
                f"features (gymnasium.spaces.flatdim) but observations has {obs.shape[1]} "
                "columns; store observations flattened with "
                "gymnasium.spaces.flatten(observation_space, obs)"
            )
    if action_space is None:
        return
    actions = values["actions"]
    if isinstance(action_space, gymnasium.spaces.Discrete):
        if actions.ndim != 1:
            raise ValueError(
                f"OfflineData.action_space: Discrete space {action_space} but actions have "
                f"shape {actions.shape} (expected (n,) integers)"
            )
        lo, hi = int(action_space.start), int(action_space.start + action_space.n)
        for name in ("actions", "next_actions"):
            a = values.get(name)
            if a is not None and a.size and (a.min() < lo or a.max() >= hi):
                raise ValueError(
                    f"OfflineData.{name}: values must lie in [{lo}, {hi}) for {action_space}, "
                    f"got range [{a.min()}, {a.max()}]"
                )
        probs = values.get("next_action_probs")
        if probs is not None and probs.shape[1] != action_space.n:
            raise ValueError(
                f"OfflineData.next_action_probs: has {probs.shape[1]} columns but the action "
                f"space {action_space} has {action_space.n} actions"
            )
    elif isinstance(action_space, gymnasium.spaces.Box):
        act_dim = int(np.prod(action_space.shape))
        if actions.ndim != 2 or actions.shape[1] != act_dim:
            raise ValueError(
                f"OfflineData.action_space: Box space {action_space} needs actions of shape "
                f"(n, {act_dim}), got {actions.shape}"
            )
    else:
        raise ValueError(
            f"OfflineData.action_space: expected a gymnasium Discrete or Box, got {action_space!r}"
        )


def infer_spaces(data: OfflineData) -> tuple[gymnasium.spaces.Space, gymnasium.spaces.Space]:
    """The data's spaces, or ones inferred from the arrays when they were not recorded.

    Observations: the recorded space, else an unbounded Box (o,). Discrete
    actions: ``Discrete(A)`` with A from `next_action_probs` or the largest
    action seen + 1. Box actions: unbounded.
    """
    obs_space = data.observation_space
    if obs_space is None:
        obs_space = gymnasium.spaces.Box(-np.inf, np.inf, (data.obs_dim,), np.float64)
    act_space = data.action_space
    if act_space is None:
        if data.discrete:
            seen = [data.actions]
            if data.next_actions is not None:
                seen.append(data.next_actions)
            num = int(max(int(np.max(s)) for s in seen)) + 1
            if data.next_action_probs is not None:
                num = max(num, data.next_action_probs.shape[1])
            if min(int(np.min(s)) for s in seen) < 0:
                raise ValueError(
                    "OfflineData.actions: negative Discrete actions need an explicit "
                    "action_space (Discrete(n, start=...))"
                )
            act_space = gymnasium.spaces.Discrete(num)
        else:
            act_space = gymnasium.spaces.Box(-np.inf, np.inf, (data.actions.shape[1],), np.float64)
    return obs_space, act_space


# ---------------------------------------------------------------------- .npz format
def _space_arrays(data: OfflineData) -> dict[str, np.ndarray]:
    """The spaces as 0-d unicode arrays holding JSON (format version 2)."""
    out: dict[str, np.ndarray] = {}
    if data.observation_space is not None:
        out["observation_space_json"] = np.asarray(space_to_json(data.observation_space))
    if data.action_space is not None:
        out["action_space_json"] = np.asarray(space_to_json(data.action_space))
    return out


def save_npz(path, data: OfflineData) -> Path:
    """Write `data` to `path` (``.npz``, atomically): the format of docs/datasets.md."""
    if not isinstance(data, OfflineData):
        raise TypeError(f"save_npz: data must be an OfflineData, got {type(data).__name__}")
    arrays = {name: getattr(data, name) for name in REQUIRED_ARRAYS + OPTIONAL_ARRAYS}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    arrays.update(_space_arrays(data))
    arrays["format_version"] = np.asarray(FORMAT_VERSION)
    return files.save_npz(path, **arrays)


def _json_space(arrays: dict, name: str):
    """The space in the 0-d string array `name`, or None when absent."""
    if name not in arrays:
        return None
    value = arrays[name]
    if value.ndim != 0 or value.dtype.kind != "U":
        raise ValueError(
            f"{name}: expected a 0-d string array holding JSON, got dtype {value.dtype} "
            f"shape {value.shape}"
        )
    try:
        return space_from_json(str(value[()]))
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def _spaces_v2(arrays: dict) -> tuple:
    """(observation space, action space) of a version-2 file (None where absent)."""
    return _json_space(arrays, "observation_space_json"), _json_space(arrays, "action_space_json")


def _spaces_v1(arrays: dict) -> tuple:
    """(observation Box, action space) of a version-1 file (None where absent)."""
    obs_space = act_space = None
    if "observation_low" in arrays or "observation_high" in arrays:
        low = arrays.get("observation_low")
        high = arrays.get("observation_high")
        if low is None or high is None:
            raise ValueError("observation_low and observation_high go together")
        obs_space = gymnasium.spaces.Box(
            np.asarray(low, np.float64), np.asarray(high, np.float64), dtype=np.float64
        )
    if "action_n" in arrays:
        start = int(arrays.get("action_start", 0))
        act_space = gymnasium.spaces.Discrete(int(arrays["action_n"]), start=start)
    elif "action_low" in arrays or "action_high" in arrays:
        low = arrays.get("action_low")
        high = arrays.get("action_high")
        if low is None or high is None:
            raise ValueError("action_low and action_high go together")
        act_space = gymnasium.spaces.Box(
            np.asarray(low, np.float64), np.asarray(high, np.float64), dtype=np.float64
        )
    return obs_space, act_space


def _format_version(arrays: dict, path: Path) -> int:
    """The file's format_version; without one, 1 if it holds version-1 space arrays, else 2."""
    if "format_version" not in arrays:
        return 1 if set(arrays) & set(_V1_SPACE_ARRAYS) else FORMAT_VERSION
    raw = arrays["format_version"]
    ok = raw.size == 1 and raw.dtype.kind in "iu"
    if not ok or int(raw.reshape(())) not in READABLE_VERSIONS:
        shown = raw.reshape(()).tolist() if raw.size == 1 else raw.tolist()
        raise ValueError(
            f"{path}: format_version {shown!r} is not supported (this tdntk reads "
            f"{' and '.join(map(str, READABLE_VERSIONS))})"
        )
    return int(raw.reshape(()))


def _rename_d4rl(arrays: dict, path: Path) -> dict:
    """D4RL's ``terminals`` / ``timeouts`` read as ``terminated`` / ``truncated``; when either
    is present, D4RL's ``infos/*`` and ``metadata/*`` arrays are dropped."""
    found = [name for name in D4RL_NAMES if name in arrays]
    if not found:
        return arrays
    out = {}
    for name, value in arrays.items():
        if name.startswith(_D4RL_IGNORED_PREFIXES):
            continue
        ours = D4RL_NAMES.get(name, name)
        if ours != name and ours in arrays:
            raise ValueError(
                f"{path}: holds both {name!r} (D4RL's name) and {ours!r}; keep one of them"
            )
        out[ours] = value
    if "truncated" not in out and "terminated" in out:
        raise ValueError(
            f"{path}: has D4RL's 'terminals' but no 'timeouts' (or 'truncated'); add it (all "
            "False when no episode was cut by a time limit)"
        )
    return out


def load_npz(path) -> OfflineData:
    """Read an `OfflineData` from a ``.npz`` file (docs/datasets.md).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable ``.npz``, a required array is missing, an
            unknown ``format_version``, no transitions, or the arrays fail
            `OfflineData` checks (the message names the file and the array).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as err:  # zipfile/pickle/format errors all mean "not our .npz"
        raise ValueError(f"{path}: cannot read as a .npz archive ({err})") from None
    if not arrays:
        raise ValueError(
            f"{path}: the archive holds no arrays (an empty dataset); a dataset needs the "
            f"arrays {', '.join(REQUIRED_ARRAYS)} with at least one transition (docs/datasets.md)"
        )
    arrays = _rename_d4rl(arrays, path)
    missing = [name for name in REQUIRED_ARRAYS if name not in arrays]
    if missing:
        raise ValueError(
            f"{path}: missing required array(s) {', '.join(missing)} "
            f"(found: {', '.join(sorted(arrays)) or 'none'}; see docs/datasets.md)"
        )
    version = _format_version(arrays, path)
    known = set(REQUIRED_ARRAYS + OPTIONAL_ARRAYS + _SPACE_ARRAYS[version] + ("format_version",))
    unknown = sorted(set(arrays) - known)
    if unknown:
        raise ValueError(
            f"{path}: unknown array(s) {', '.join(unknown)} for format_version {version} "
            f"(expected names: {', '.join(REQUIRED_ARRAYS + OPTIONAL_ARRAYS)}, and the space "
            f"arrays {', '.join(_SPACE_ARRAYS[version])}; see docs/datasets.md)"
        )
    try:
        read_spaces = _spaces_v1 if version == 1 else _spaces_v2
        obs_space, act_space = read_spaces(arrays)
        return OfflineData(
            **{name: arrays.get(name) for name in REQUIRED_ARRAYS + OPTIONAL_ARRAYS},
            observation_space=obs_space,
            action_space=act_space,
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
