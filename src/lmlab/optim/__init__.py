"""Optimizers, learning-rate schedules and parameter groups (plain PyTorch)."""

from lmlab.optim.param_groups import param_groups
from lmlab.optim.schedules import (
    WSD,
    InverseSqrt,
    MultiplierSchedule,
    WarmupConstant,
    WarmupCosine,
    WarmupLinear,
)

__all__ = [
    "param_groups",
    "MultiplierSchedule",
    "WarmupCosine",
    "WarmupLinear",
    "WarmupConstant",
    "WSD",
    "InverseSqrt",
]
