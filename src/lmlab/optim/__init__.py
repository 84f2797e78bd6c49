"""Optimizers, learning-rate schedules and parameter groups (plain PyTorch)."""

from lmlab.optim.adam import Adam, AdamW
from lmlab.optim.lion import Lion
from lmlab.optim.muon import Muon, muon_param_groups, newton_schulz
from lmlab.optim.param_groups import grouped, param_groups
from lmlab.optim.schedules import (
    WSD,
    InverseSqrt,
    MultiplierSchedule,
    WarmupConstant,
    WarmupCosine,
    WarmupLinear,
)
from lmlab.optim.sgd import SGD
from lmlab.optim.skippable import SkippableOptimizer

__all__ = [
    "param_groups",
    "grouped",
    "muon_param_groups",
    "SkippableOptimizer",
    "Adam",
    "AdamW",
    "Lion",
    "Muon",
    "SGD",
    "newton_schulz",
    "MultiplierSchedule",
    "WarmupCosine",
    "WarmupLinear",
    "WarmupConstant",
    "WSD",
    "InverseSqrt",
]
