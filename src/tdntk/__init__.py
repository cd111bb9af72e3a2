"""tdntk: closed-form TD training dynamics of infinitely wide Q-networks.

Implements "Wide neural network training dynamics for reinforcement learning"
(the paper in ../shared/paper) and the conventions of ../shared/notes/math.md.
Importing tdntk changes no global state: float64 is taken locally (NumPy/SciPy
for the closed form, ``jax.enable_x64`` scopes for the networks).
"""

from . import envs  # registers gymnasium's "tdntk/ToyChain-v0"
from .data import Transitions, discounts
from .dynamics import LearningRateWarning, SoftTarget, TDDynamics
from .nets import MLP
from .predict import TDNTK, Prediction

__all__ = [
    "envs",
    "MLP",
    "Transitions",
    "discounts",
    "SoftTarget",
    "TDDynamics",
    "TDNTK",
    "Prediction",
    "LearningRateWarning",
]
__version__ = "0.1.0"
