"""tdntk: closed-form TD training dynamics of infinitely wide Q-networks.

Implements *Wide Neural Network Training Dynamics for Reinforcement Learning*
(anonymous authors, a manuscript under double-blind review) with the
conventions of the documentation's theory page, and goes beyond it.
Gymnasium (which installs a warning filter of its own when imported) is only
imported by the modules that need it: ``import tdntk.envs`` registers
``gymnasium.make("tdntk/ToyChain-v0")``.  Importing tdntk changes no global
state: float64 is taken in local ``jax.enable_x64`` scopes.
"""

from importlib import metadata as _metadata

from .data import Transitions, discounts
from .dynamics import (
    DivergenceWarning,
    LearningRateWarning,
    Schedule,
    SoftTarget,
    Spectrum,
    Stability,
    TDDynamics,
    driving_spectrum,
    stability,
)
from .empirical import (
    EmpiricalKernels,
    empirical_ntk,
    linearisation,
    linearised_ensemble,
    linearised_q,
    parameter_trajectory,
)
from .nets import MLP
from .predict import TDNTK, Prediction, critical_learning_rate
from .solvers.choice import Krylov
from .solvers.krylov import ConvergenceWarning
from .training import EnsembleResult, init_ensemble, train_ensemble

__all__ = [
    "MLP",
    "Transitions",
    "discounts",
    "SoftTarget",
    "Schedule",
    "Spectrum",
    "Stability",
    "TDDynamics",
    "driving_spectrum",
    "stability",
    "critical_learning_rate",
    "TDNTK",
    "Prediction",
    "Krylov",
    "ConvergenceWarning",
    "LearningRateWarning",
    "DivergenceWarning",
    "train_ensemble",
    "init_ensemble",
    "EnsembleResult",
    "EmpiricalKernels",
    "empirical_ntk",
    "linearisation",
    "linearised_q",
    "linearised_ensemble",
    "parameter_trajectory",
]
try:  # the one version source is pyproject.toml
    __version__ = _metadata.version("tdntk")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
