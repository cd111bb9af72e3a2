"""Observation spaces: flattening with Gymnasium's utilities, leaf structure, JSON form.

Any space built from Box, Discrete, MultiDiscrete, MultiBinary, Tuple and
Dict (nested) is supported. Observations are stored flattened with
``gymnasium.spaces.flatten`` (Discrete: one-hot; MultiDiscrete: one one-hot
per element; MultiBinary: its 0/1 values; Box: its values, row-major;
Tuple/Dict: the parts concatenated in the space's order), so an observation
space of flat dimension o (``gymnasium.spaces.flatdim``) gives (o,) float64
rows.

A *leaf* is a Box, Discrete, MultiDiscrete or MultiBinary part of the space;
leaves are listed in flatten order (Tuple: its order; Dict: ``space.spaces``
order, which is what ``flatten`` concatenates). The *components* of an
observation are its unflattened leaf values, one per scalar: a Box leaf
gives its elements, a Discrete leaf its integer value, a MultiDiscrete or
MultiBinary leaf one integer per element.

Shapes: m observations, o flat features, c components.
"""

from __future__ import annotations

import json

import gymnasium
import numpy as np
from gymnasium import spaces as gs
from gymnasium.vector.utils import batch_space, iterate

__all__ = [
    "SUPPORTED_SPACES",
    "check_space",
    "flat_dim",
    "flatten_one",
    "flatten_batch",
    "leaves",
    "box_mask",
    "has_discrete_leaf",
    "component_names",
    "components",
    "space_to_json",
    "space_from_json",
    "readable_names",
    "readable_columns",
]

_LEAF_TYPES = (gs.Box, gs.Discrete, gs.MultiDiscrete, gs.MultiBinary)
SUPPORTED_SPACES = "Box, Discrete, MultiDiscrete, MultiBinary, and Tuple or Dict of these (nested)"


# ---------------------------------------------------------------------- structure
def check_space(space, where: str) -> None:
    """Raise ValueError (naming `where`) unless `space` is built only from supported spaces."""
    if isinstance(space, _LEAF_TYPES):
        return
    if isinstance(space, gs.Tuple):
        for part in space.spaces:
            check_space(part, where)
        return
    if isinstance(space, gs.Dict):
        for key, part in space.spaces.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: Dict space keys must be strings, got {key!r}")
            check_space(part, where)
        return
    raise ValueError(
        f"{where}: cannot flatten the space {space!r} into a fixed-length vector; "
        f"supported spaces: {SUPPORTED_SPACES}"
    )


def flat_dim(space, where: str) -> int:
    """o: ``gymnasium.spaces.flatdim(space)`` after `check_space`."""
    check_space(space, where)
    return int(gs.flatdim(space))


def flatten_one(space, observation) -> np.ndarray:
    """One observation -> (o,) float64 with ``gymnasium.spaces.flatten``."""
    return np.asarray(gs.flatten(space, observation), dtype=np.float64)


def flatten_batch(space, batch, count: int) -> np.ndarray:
    """`count` observations batched along a first axis (as Minari stores them: an array,
    or a tuple/dict of arrays for Tuple/Dict spaces) -> (count, o) float64.

    A Box, Discrete or MultiBinary space is flattened in one call of
    ``gymnasium.spaces.flatten`` on the batched space (``batch_space``: a Box,
    a MultiDiscrete of one-hots, a 0/1 Box), whose flat vector is the per-step
    flat vectors one after another; other spaces (MultiDiscrete, whose batched
    space is a Box of raw values, Tuple, Dict) are flattened step by step
    (``gymnasium.vector.utils.iterate``).
    """
    o = int(gs.flatdim(space))
    if count == 0:
        return np.zeros((0, o))
    batched = batch_space(space, count)
    if isinstance(space, gs.Box | gs.Discrete | gs.MultiBinary):
        return np.asarray(gs.flatten(batched, batch), dtype=np.float64).reshape(count, o)
    rows = [flatten_one(space, item) for item in iterate(batched, batch)]
    if len(rows) != count:
        raise ValueError(f"expected {count} observations, got {len(rows)}")
    return np.asarray(rows, dtype=np.float64).reshape(count, o)


def leaves(space, path: tuple = ()) -> list[tuple[tuple, gymnasium.Space]]:
    """(path, leaf space) in flatten order; a path holds Tuple indices and Dict keys."""
    if isinstance(space, gs.Tuple):
        return [leaf for i, part in enumerate(space.spaces) for leaf in leaves(part, (*path, i))]
    if isinstance(space, gs.Dict):
        return [leaf for key, part in space.spaces.items() for leaf in leaves(part, (*path, key))]
    return [(path, space)]


def box_mask(space) -> np.ndarray:
    """(o,) bool: True for flat coordinates that come from a Box leaf.

    Each leaf fills ``gymnasium.spaces.flatdim(leaf)`` consecutive coordinates,
    in flatten order.
    """
    parts = [np.full(int(gs.flatdim(leaf)), isinstance(leaf, gs.Box)) for _, leaf in leaves(space)]
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def has_discrete_leaf(space) -> bool:
    """Whether any leaf is Discrete, MultiDiscrete or MultiBinary."""
    return space is not None and any(not isinstance(leaf, gs.Box) for _, leaf in leaves(space))


# ---------------------------------------------------------------------- components
def _leaf_shape(leaf) -> tuple[int, ...]:
    return () if isinstance(leaf, gs.Discrete) else tuple(int(k) for k in leaf.shape)


def component_names(space) -> list[str]:
    """Names of the c components: ``state_index`` for a Discrete space; otherwise
    ``obs`` followed by the path and element index, e.g. ``obs[0]`` (Blackjack's player
    sum), ``obs[pos][1]`` (element 1 of the Dict entry ``pos``)."""
    if isinstance(space, gs.Discrete):
        return ["state_index"]
    names = []
    for path, leaf in leaves(space):
        base = "obs" + "".join(f"[{p}]" for p in path)
        shape = _leaf_shape(leaf)
        if not shape:
            names.append(base)
            continue
        for index in np.ndindex(*shape):
            names.append(base + "".join(f"[{i}]" for i in index))
    return names


def components(space, flat) -> np.ndarray:
    """(m, o) flattened observations -> (m, c) components (``gymnasium.spaces.unflatten``
    per leaf; Box leaves are their flat coordinates as they are).

    Raises:
        ValueError: a row whose discrete part is not a flattened point of the space
            (``flatten(unflatten(row)) != row`` on a non-Box leaf), naming the row.
    """
    flat = np.asarray(flat, dtype=np.float64)
    m = flat.shape[0]
    out, offset = [], 0
    for path, leaf in leaves(space):
        width = int(gs.flatdim(leaf))
        part = flat[:, offset : offset + width]
        offset += width
        if isinstance(leaf, gs.Box):
            out.append(part)
            continue
        size = int(np.prod(_leaf_shape(leaf), dtype=np.int64))
        values = np.empty((m, size))
        for i, row in enumerate(part):
            values[i] = _unflatten_checked(leaf, row, path, i)
        out.append(values)
    return np.concatenate(out, axis=1) if out else np.zeros((m, 0))


def _unflatten_checked(leaf, row: np.ndarray, path: tuple, index: int) -> np.ndarray:
    where = f"row {index}" + (f", part {list(path)}" if path else "")
    try:
        value = gs.unflatten(leaf, row)
        again = np.asarray(gs.flatten(leaf, value), dtype=np.float64)
    except (ValueError, IndexError) as err:
        raise ValueError(f"{where} is not a flattened observation of {leaf} ({err})") from None
    if not np.array_equal(again, row):
        raise ValueError(
            f"{where} is not a flattened observation of {leaf}: expected one-hot "
            f"(Discrete/MultiDiscrete) or 0/1 (MultiBinary) values, got {row.tolist()}"
        )
    return np.asarray(value, dtype=np.float64).reshape(-1)


# ---------------------------------------------------------------------- JSON
def _bound(values: np.ndarray):
    """A Box bound as JSON: one number when all elements are equal, else a flat list;
    infinities as the strings "inf" / "-inf"."""
    flat = values.reshape(-1)
    items = [_number(v) for v in flat.tolist()]
    if flat.size and np.all(flat == flat[0]):
        return items[0]
    return items


def _number(v):
    if isinstance(v, float) and np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _unbound(value, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    items = value if isinstance(value, list) else [value]
    arr = np.array([float(v) if isinstance(v, str) else v for v in items]).astype(dtype)
    return np.broadcast_to(arr, shape).copy() if arr.size == 1 else arr.reshape(shape)


def _to_spec(space) -> dict:
    if isinstance(space, gs.Box):
        return {
            "type": "Box", "shape": list(space.shape), "dtype": np.dtype(space.dtype).name,
            "low": _bound(space.low), "high": _bound(space.high),
        }  # fmt: skip
    if isinstance(space, gs.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start),
                "dtype": np.dtype(space.dtype).name}  # fmt: skip
    if isinstance(space, gs.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(),
                "start": space.start.tolist(), "dtype": np.dtype(space.dtype).name}  # fmt: skip
    if isinstance(space, gs.MultiBinary):
        return {"type": "MultiBinary", "shape": [int(k) for k in space.shape]}
    if isinstance(space, gs.Tuple):
        return {"type": "Tuple", "spaces": [_to_spec(s) for s in space.spaces]}
    if isinstance(space, gs.Dict):
        return {"type": "Dict", "spaces": [[k, _to_spec(s)] for k, s in space.spaces.items()]}
    raise ValueError(f"cannot describe the space {space!r} as JSON; supported: {SUPPORTED_SPACES}")


def space_to_json(space) -> str:
    """The space as a JSON string (docs/datasets.md, "Space JSON")."""
    check_space(space, "space_to_json")
    return json.dumps(_to_spec(space), allow_nan=False, separators=(",", ":"))


def _from_spec(spec: dict):
    kind = spec["type"]
    if kind == "Box":
        shape, dtype = tuple(int(k) for k in spec["shape"]), np.dtype(spec["dtype"])
        low, high = _unbound(spec["low"], shape, dtype), _unbound(spec["high"], shape, dtype)
        return gs.Box(low, high, shape, dtype=dtype)
    if kind == "Discrete":
        dtype = np.dtype(spec.get("dtype", "int64"))
        return gs.Discrete(int(spec["n"]), start=int(spec.get("start", 0)), dtype=dtype)
    if kind == "MultiDiscrete":
        nvec = np.asarray(spec["nvec"], dtype=np.int64)
        start = np.asarray(spec.get("start", np.zeros_like(nvec)), dtype=np.int64)
        return gs.MultiDiscrete(nvec, dtype=np.dtype(spec.get("dtype", "int64")), start=start)
    if kind == "MultiBinary":
        return gs.MultiBinary([int(k) for k in spec["shape"]])
    if kind == "Tuple":
        return gs.Tuple([_from_spec(s) for s in spec["spaces"]])
    if kind == "Dict":
        return gs.Dict([(str(k), _from_spec(s)) for k, s in spec["spaces"]])  # order kept
    raise ValueError(f"unknown space type {kind!r}; supported: {SUPPORTED_SPACES}")


def space_from_json(text: str):
    """The space described by `text` (from `space_to_json`).

    Raises:
        ValueError: not valid JSON or not a valid space description.
    """
    try:
        return _from_spec(json.loads(text))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        kind = type(err).__name__
        raise ValueError(f"invalid space JSON {text[:200]!r} ({kind}: {err})") from None


# ---------------------------------------------------------------------- readable states
def readable_names(space, o: int) -> list[str]:
    """Names of the columns that describe a state to a reader (and the plot's x choices):
    the components (`component_names`) when the space has a Discrete, MultiDiscrete or
    MultiBinary part, else the flat coordinates ``obs_0 .. obs_{o-1}``."""
    if has_discrete_leaf(space):
        return component_names(space)
    return [f"obs_{j}" for j in range(o)]


def readable_columns(space, flat) -> tuple[list[str], np.ndarray]:
    """(names (c,), values (m, c)) of `readable_names` for (m, o) flat observations."""
    flat = np.asarray(flat, dtype=np.float64)
    if has_discrete_leaf(space):
        return component_names(space), components(space, flat)
    return readable_names(space, flat.shape[1]), flat
