"""Gymnasium environments; importing this module registers them.

* ``"tdntk/ToyChain-v0"``: `ToyChainEnv`, the toy chain of the paper (sec. 5.1, app. D.1).
"""

from __future__ import annotations

import gymnasium as gym

from .toy import ToyChainEnv, rollout_value, toy_transitions, true_values

__all__ = ["ToyChainEnv", "rollout_value", "toy_transitions", "true_values", "TOY_CHAIN_ID"]

TOY_CHAIN_ID = "tdntk/ToyChain-v0"

if TOY_CHAIN_ID not in gym.registry:
    gym.register(id=TOY_CHAIN_ID, entry_point="tdntk.envs.toy:ToyChainEnv")
