"""`tdntk collect`: roll a policy out in any Gymnasium environment into a `.npz` dataset.

The work is `tdntk.datasets.collect` and `tdntk.datasets.save_npz`; this module
holds the command's settings and prints what it wrote. ``--out`` must be a new
file: an existing one is refused before collecting, and ``--overwrite``
replaces only a file that reads as a tdntk dataset (written atomically, so a
failure leaves it as it was).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..datasets.collect import collect
from ..datasets.offline import OfflineData, load_npz, save_npz
from ..datasets.policies import load_policy
from ..files import OutputError
from .command import Command

__all__ = ["CollectConfig", "run", "COMMAND"]


@dataclass(frozen=True)
class CollectConfig:
    """Settings of `tdntk collect`."""

    env: str | None = field(
        default=None,
        metadata={
            "help": "Gymnasium environment id, e.g. CartPole-v1 (or module:EnvId to import its "
            "package).",
            "required": True,
        },
    )
    policy: str | None = field(
        default=None,
        metadata={
            "help": "PKG.MODULE:FUNC or path/file.py:FUNC, policy(obs) -> action (default: "
            "uniform random)."
        },
    )
    transitions: int = field(default=1000, metadata={"help": "Transitions to collect."})
    seed: int = field(default=0, metadata={"help": "Seed of resets and actions."})
    out: str | None = field(
        default=None,
        metadata={"help": "Output .npz file (format: docs/datasets.md).", "required": True},
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Replace --out if it is a tdntk dataset (any other file is refused)."},
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        if self.env is None or self.out is None:
            raise ValueError("collect needs --env and --out")
        if self.transitions < 1:
            raise ValueError(f"--transitions must be >= 1, got {self.transitions}")
        if Path(self.out).suffix != ".npz":
            raise ValueError(f"--out must end in .npz, got {self.out}")


def check_out_file(out, overwrite: bool) -> Path:
    """Refuse `out` unless it is new, or a tdntk dataset with `overwrite` (`OutputError`)."""
    path = Path(out)
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder; give the path of a new .npz file")
    if not path.exists():
        parent = next(p for p in path.absolute().parents if p.exists())
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise OutputError(f"--out {path}: cannot write in {parent}; choose another path")
        return path
    if not overwrite:
        raise OutputError(
            f"--out {path} exists; choose another file name, or add --overwrite to replace it "
            "(only a dataset tdntk wrote is replaced)"
        )
    try:
        load_npz(path)
    except (ValueError, OSError):
        raise OutputError(
            f"--out {path} exists and is not a tdntk dataset, so tdntk does not replace it even "
            "with --overwrite; choose another file name"
        ) from None
    return path


def run(cfg: CollectConfig) -> OfflineData:
    """Collect the data, write it to ``cfg.out`` and print a one-line summary."""
    check_out_file(cfg.out, cfg.overwrite)
    policy = None if cfg.policy is None else load_policy(cfg.policy)
    data = collect(cfg.env, policy, cfg.transitions, seed=cfg.seed, progress=cfg.progress)
    try:
        save_npz(cfg.out, data)
    except OSError as err:
        raise OutputError(f"--out {cfg.out}: cannot write it ({err.strerror or err})") from None
    print(
        f"wrote {cfg.out}: {data.n} transitions, {data.num_episodes} episodes "
        f"({int(data.terminated.sum())} terminated, {int(data.truncated.sum())} truncated), "
        f"policy {cfg.policy or 'uniform random'}"
    )
    return data


COMMAND = Command(
    config=CollectConfig,
    run=run,
    help="Collect transitions of a policy in any Gymnasium environment into a .npz dataset.",
)
