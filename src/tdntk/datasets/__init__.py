"""Data only: offline datasets of any Gymnasium environment, their features and policies.

* Observation spaces: Box, Discrete, MultiDiscrete, MultiBinary and nested
  Tuple/Dict; observations are stored flattened with Gymnasium's utilities
  (`tdntk.datasets.spaces`: flattening, leaf structure, the space JSON).
* `collect` rolls a policy out in a Gymnasium environment into `OfflineData`;
  `save_npz` / `load_npz` write and read it (format: docs/datasets.md);
  `load_minari` reads a locally stored Minari dataset.
* `Features` encodes (state, action) pairs; `to_transitions` turns
  `OfflineData` into the core's `Transitions` for a target policy (or the
  behaviour policy, SARSA-style).
* `load_policy`, `UniformRandomPolicy` and `sample_actions`: policies.

Value estimates from such data are `tdntk.experiments.evaluate`.
"""

from .collect import collect
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
]
