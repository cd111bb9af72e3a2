"""Stages of an experiment: each runs once, its result saved; a rerun loads it.

An experiment is a sequence of named stages (the closed form, one training,
the Monte Carlo truth, ...). `Stages.run` computes a stage and saves its
result as ``<out>/checkpoints/stages/<name>.npz`` (atomically), or loads that
file when an earlier run of the same command and settings finished the
stage (the output folder's manifest guarantees the settings match,
`tdntk.files.OutputFolder`). A stage's trainings checkpoint into
``<out>/checkpoints/train/<name>-<digest>/`` (`Stages.checkpoint_dir`), so an
unfinished stage resumes from its last checkpoint.

Results are trees of dicts, lists, tuples, NumPy arrays and scalars, None,
strings, and frozen dataclasses of tdntk (rebuilt by their constructor): the
arrays go into the ``.npz``, the structure into a JSON string beside them, so
loading needs no pickle and floats come back bit for bit.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..files import OutputFolder, open_output, save_npz, settings_digest, write_json

__all__ = ["Stages", "run_in_stages", "save_result", "load_result"]


class Stages:
    """Runs named stages once per output folder and times them.

    Args:
        folder: the claimed output folder, or None (compute everything, save nothing).
        log: prints a progress line.

    Attributes:
        times: stage name -> {"seconds": compute time, "this_run": bool}, in order.
    """

    def __init__(self, folder: OutputFolder | None, log: Callable[[str], None]):
        self.folder = folder
        self.log = log
        self.times: dict[str, dict] = {}
        self._start = time.perf_counter()

    @property
    def train_root(self) -> Path | None:
        """Where trainings checkpoint (None: nowhere)."""
        return None if self.folder is None else self.folder.trainings

    def checkpoint_dir(self, name: str, key) -> Path | None:
        """The training checkpoint folder of stage `name`: ``train/<name>-<digest of key>``."""
        root = self.train_root
        return None if root is None else root / f"{name}-{settings_digest(key)[:12]}"

    def run(self, name: str, compute: Callable[[], object], what: str = ""):
        """The result of stage `name`: loaded if an earlier run saved it, else ``compute()``
        (then saved, and the stage's training checkpoints removed)."""
        path = None if self.folder is None else self.folder.stages / f"{name}.npz"
        if path is not None and path.exists():
            value, seconds = load_result(path)
            self.times[name] = {"seconds": seconds, "this_run": False}
            self.log(f"stage {name}: done earlier ({seconds:.1f} s), loaded")
            return value
        self.log(f"stage {name}: {what or 'running'} ...")
        tick = time.perf_counter()
        value = compute()
        seconds = time.perf_counter() - tick
        if path is not None:
            save_result(path, value, seconds)
            self._remove_checkpoints(name)
        self.times[name] = {"seconds": seconds, "this_run": True}
        self.log(f"stage {name}: done in {seconds:.1f} s")
        return value

    def seconds(self, name: str) -> float:
        """Compute seconds of stage `name` (in whichever run computed it)."""
        return self.times[name]["seconds"]

    def summary(self) -> dict:
        """{"stages": [{name, seconds, run: "this"|"earlier"}], "compute_seconds",
        "this_run_seconds"} (JSON-able)."""
        rows = [
            {"name": k, "seconds": v["seconds"], "run": "this" if v["this_run"] else "earlier"}
            for k, v in self.times.items()
        ]
        return {
            "stages": rows,
            "compute_seconds": float(sum(r["seconds"] for r in rows)),
            "this_run_seconds": time.perf_counter() - self._start,
        }

    def table(self) -> str:
        """The time per stage as printed lines."""
        s = self.summary()
        width = max([len(r["name"]) for r in s["stages"]] + [8])
        lines = ["time per stage:"]
        for r in s["stages"]:
            note = "" if r["run"] == "this" else "  (earlier run, loaded)"
            lines.append(f"  {r['name']:<{width}} {r['seconds']:9.1f} s{note}")
        lines.append(f"  {'this run':<{width}} {s['this_run_seconds']:9.1f} s (wall time)")
        return "\n".join(lines)

    def _remove_checkpoints(self, name: str) -> None:
        root = self.train_root
        for folder in root.glob(f"{name}-*") if root is not None and root.exists() else []:
            for path in folder.glob("*.npz"):
                path.unlink()
            for path in folder.glob(".*.tmp"):
                path.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()


# ---------------------------------------------------------------------- results on disk
def save_result(path, value, seconds: float) -> Path:
    """Write a stage result (module docstring) and its compute seconds to `path` (.npz)."""
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(value, arrays)
    meta = json.dumps({"tree": tree, "seconds": float(seconds)}, allow_nan=True)
    return save_npz(path, __tree__=np.array(meta), **arrays)


def load_result(path) -> tuple[object, float]:
    """(value, seconds) written by `save_result`."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("__tree__")))
    return _decode(meta["tree"], arrays), float(meta["seconds"])


def _encode(obj, arrays: dict):
    if isinstance(obj, np.ndarray | np.generic):
        arr = np.asarray(obj)
        if arr.dtype == object:
            raise TypeError("stage results cannot hold object arrays")
        key = f"a{len(arrays)}"
        arrays[key] = arr
        return {"__array__": key, "scalar": isinstance(obj, np.generic)}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, tuple | list):
        items = [_encode(v, arrays) for v in obj]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"stage results need string keys, got {list(obj)}")
        return {"__dict__": [[k, _encode(v, arrays)] for k, v in obj.items()]}
    cls = type(obj)
    if dataclasses.is_dataclass(obj) and cls.__module__.startswith("tdntk."):
        fields = {f.name: _encode(getattr(obj, f.name), arrays)
                  for f in dataclasses.fields(obj) if f.init}  # fmt: skip
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    raise TypeError(f"cannot save a {cls.__name__} in a stage result")


def _decode(tree, arrays: dict):
    if isinstance(tree, list):
        return [_decode(v, arrays) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__array__" in tree:
        arr = arrays[tree["__array__"]]
        return arr[()] if tree["scalar"] else arr
    if "__tuple__" in tree:
        return tuple(_decode(v, arrays) for v in tree["__tuple__"])
    if "__dict__" in tree:
        return {k: _decode(v, arrays) for k, v in tree["__dict__"]}
    module, name = tree["__dataclass__"].split(":")
    if not module.startswith("tdntk."):
        raise ValueError(f"stage result names a class outside tdntk: {module}")
    cls = getattr(importlib.import_module(module), name)
    return cls(**{k: _decode(v, arrays) for k, v in tree["fields"].items()})


def run_in_stages(out, command: str, settings: dict, overwrite: bool, log: Callable,
                  simulate: Callable, write_report: Callable):  # fmt: skip
    """Run an experiment as `Stages` in the output folder `out` (`tdntk.files.open_output`:
    an earlier run of the same settings resumes, its finished stages loaded):
    ``simulate(stages) -> results``, then ``write_report(results, folder)`` and
    stages.json written through the folder's staging; prints the time per stage."""
    with open_output(out, command, settings, overwrite) as folder:
        if folder.resumed:
            log(f"resuming the run in {folder.path} (finished stages are loaded)")
        stages = Stages(folder, log)
        results = simulate(stages)
        with folder.staging() as tmp:
            write_report(results, tmp)
            write_json(tmp / "stages.json", stages.summary())
        folder.complete()
    log(stages.table())
    log(f"report: {Path(out) / 'report.md'}")
    return results
