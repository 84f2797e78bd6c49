"""Schemas of the ``loss``, ``optimizer`` and ``sched`` groups."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator

from lmlab.config.schema import (
    Beta,
    Betas,
    Bool,
    Int,
    NonNegative,
    NonNegativeInt,
    Number,
    Positive,
    PositiveInt,
    Probability,
    Schema,
    Str,
    ValidationInfo,
    existing_checkpoint,
    locate,
    schema_for,
    schema_of,
    validate,
)
from lmlab.losses import InfoNCELoss, LanguageModelingLoss, TeacherLoss
from lmlab.optim import (
    SGD,
    WSD,
    Adam,
    AdamW,
    InverseSqrt,
    Lion,
    Muon,
    WarmupConstant,
    WarmupCosine,
    WarmupLinear,
    grouped,
)
from lmlab.optim.muon import ADJUST_LR_FNS

# ---- loss ----------------------------------------------------------------------------------------


@schema_of(LanguageModelingLoss)
class CrossEntropySchema(Schema):
    label_smoothing: Probability = 0.0
    z_loss: NonNegative = 0.0
    ignore_index: Int = -100


@schema_of(TeacherLoss)
class TeacherLossSchema(Schema):
    teacher: Str
    ce_weight: NonNegative = 0.0
    kl_weight: NonNegative = 1.0
    mse_weight: NonNegative = 0.0
    temperature: Positive = 1.0

    @model_validator(mode="after")
    def teacher_and_weights(self, info: ValidationInfo) -> TeacherLossSchema:
        existing_checkpoint(self.teacher, self.key(info, "teacher"))
        if not (self.ce_weight or self.kl_weight or self.mse_weight):
            raise ValueError(f"{self.key(info, 'ce_weight')}, kl_weight and mse_weight are all 0: the loss would be "
                             "0; give at least one a weight > 0")
        return self


@schema_of(InfoNCELoss)
class InfoNCESchema(Schema):
    temperature: Positive = 0.05


# ---- optimizer -----------------------------------------------------------------------------------


@schema_of(Lion)
class LionSchema(Schema):
    lr: Positive
    betas: Betas = [0.9, 0.99]
    weight_decay: NonNegative = 0.0


@schema_of(AdamW)
class AdamWSchema(LionSchema):
    eps: NonNegative = 1e-8


@schema_of(Adam)
class AdamSchema(AdamWSchema):
    decoupled_weight_decay: Bool = False


@schema_of(torch.optim.AdamW, torch.optim.Adam)
class TorchAdamSchema(AdamWSchema):
    """torch's own Adam(W): the checked fields plus every other argument of its signature."""

    open_signature = True


@schema_of(grouped)
class GroupedSchema(Schema):
    """``lmlab.optim.grouped``: ``cls`` names a torch optimizer; the other keys are its arguments, checked by
    that optimizer's own schema (or its signature)."""

    model_config = Schema.model_config | {"extra": "allow"}

    cls: Str
    weight_decay: NonNegative = 0.0

    @model_validator(mode="after")
    def arguments_of_cls(self, info: ValidationInfo) -> GroupedSchema:
        target = locate(self.cls, self.key(info, "cls"))
        prefix = self.key(info, "")
        validate(schema_for(target, ("params",)), {**(self.model_extra or {}), "weight_decay": self.weight_decay},
                 prefix)
        return self


@schema_of(SGD, torch.optim.SGD)
class SGDSchema(Schema):
    lr: Positive
    momentum: Beta = 0.0
    dampening: Probability = 0.0
    weight_decay: NonNegative = 0.0
    nesterov: Bool = False

    @model_validator(mode="after")
    def nesterov_needs_momentum(self, info: ValidationInfo) -> SGDSchema:
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError(f"{self.key(info, 'nesterov')}=true: needs {self.key(info, 'momentum')} > 0 and "
                             f"{self.key(info, 'dampening')}=0 (got {self.momentum} and {self.dampening})")
        return self


@schema_of(Muon)
class MuonSchema(Schema):
    lr: Positive
    weight_decay: NonNegative = 0.0
    momentum: Beta = 0.95
    nesterov: Bool = True
    ns_coefficients: Annotated[list[Number], Field(min_length=3, max_length=3)] = [3.4445, -4.7750, 2.0315]
    eps: NonNegative = 1e-7
    ns_steps: PositiveInt = 5
    adjust_lr_fn: Literal[ADJUST_LR_FNS] = "original"
    adamw_lr: Positive = 3e-4
    adamw_betas: Betas = [0.9, 0.95]
    adamw_eps: NonNegative = 1e-8


# ---- sched ---------------------------------------------------------------------------------------


@schema_of(WarmupConstant)
class WarmupSchema(Schema):
    warmup_steps: NonNegativeInt


@schema_of(InverseSqrt)
class InverseSqrtSchema(Schema):
    warmup_steps: PositiveInt


@schema_of(WarmupCosine, WarmupLinear)
class DecayingSchema(WarmupSchema):
    total_steps: PositiveInt
    min_lr_ratio: Probability = 0.0

    @model_validator(mode="after")
    def warmup_within_run(self, info: ValidationInfo) -> DecayingSchema:
        if self.warmup_steps >= self.total_steps:
            raise ValueError(f"{self.key(info, 'warmup_steps')}={self.warmup_steps}: must be less than "
                             f"{self.key(info, 'total_steps')}={self.total_steps}")
        return self


@schema_of(WSD)
class WSDSchema(DecayingSchema):
    decay_fraction: Annotated[float, Field(strict=True, gt=0, le=1)] = 0.1
