"""Bring your own data: any Gymnasium environment, offline datasets, value estimates.

* Observation spaces: Box, Discrete, MultiDiscrete, MultiBinary and nested
  Tuple/Dict; observations are stored flattened with Gymnasium's utilities
  (`tdntk.datasets.spaces`: flattening, leaf structure, the space JSON).
* `collect` rolls a policy out in a Gymnasium environment into `OfflineData`;
  `save_npz` / `load_npz` write and read it (format: docs/datasets.md);
  `load_minari` reads a locally stored Minari dataset.
* `Features` encodes (state, action) pairs; `to_transitions` turns
  `OfflineData` into the core's `Transitions` for a target policy (or the
  behaviour policy, SARSA-style).
* `evaluate` gives per-state value means and stds from the TD-NTK ensemble
  (and optionally finite networks); `write_evaluation` writes them.
"""

from .collect import collect
from .evaluate import (
    EvaluateConfig,
    MemoryLimitError,
    ValueEstimate,
    evaluate,
    memory_estimate,
    write_evaluation,
)
from .features import Features, to_transitions
from .minari_io import load_minari
from .offline import OfflineData, infer_spaces, load_npz, save_npz
from .policies import UniformRandomPolicy, load_policy

__all__ = [
    "OfflineData",
    "collect",
    "save_npz",
    "load_npz",
    "load_minari",
    "infer_spaces",
    "Features",
    "to_transitions",
    "load_policy",
    "UniformRandomPolicy",
    "EvaluateConfig",
    "ValueEstimate",
    "MemoryLimitError",
    "evaluate",
    "write_evaluation",
    "memory_estimate",
]
