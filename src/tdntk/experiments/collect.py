"""`tdntk collect`: roll a policy out in any Gymnasium environment into a `.npz` dataset.

The work is `tdntk.datasets.collect` and `tdntk.datasets.save_npz`; this module
holds the command's settings and prints what it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..datasets.collect import collect
from ..datasets.offline import OfflineData, save_npz
from ..datasets.policies import load_policy
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
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        if self.env is None or self.out is None:
            raise ValueError("collect needs --env and --out")
        if self.transitions < 1:
            raise ValueError(f"--transitions must be >= 1, got {self.transitions}")
        if Path(self.out).suffix != ".npz":
            raise ValueError(f"--out must end in .npz, got {self.out}")


def run(cfg: CollectConfig) -> OfflineData:
    """Collect the data, write it to ``cfg.out`` and print a one-line summary."""
    policy = None if cfg.policy is None else load_policy(cfg.policy)
    data = collect(cfg.env, policy, cfg.transitions, seed=cfg.seed, progress=cfg.progress)
    save_npz(cfg.out, data)
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
