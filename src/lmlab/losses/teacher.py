"""Losses against a frozen teacher checkpoint: distillation (CE + KL) and logit matching (MSE)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn

from lmlab.arguments import NonNegative, Positive, checked
from lmlab.checkpoint import check_checkpoint, load_checkpoint
from lmlab.errors import ArgumentError
from lmlab.losses.distillation import kl_divergence
from lmlab.losses.language_modeling import _cross_entropy
from lmlab.losses.regression import mse


@runtime_checkable
class UsesTeacher(Protocol):
    """A loss computed against a frozen teacher model: the task runs ``teacher`` on the student's inputs
    (without gradients) and passes its logits, ``loss(logits, targets, teacher_logits)``."""

    teacher: nn.Module

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        ...


def teacher_and_weights(teacher: str, ce_weight: float, kl_weight: float, mse_weight: float) -> None:
    """The teacher is a checkpoint lmlab can load, and some term counts."""
    check_checkpoint(teacher, field="teacher")
    if not (ce_weight or kl_weight or mse_weight):
        raise ArgumentError("", None, "{ce_weight}, {kl_weight} and {mse_weight}: all are 0, so the loss would be 0; "
                            "give at least one a weight > 0", ce_weight=ce_weight, kl_weight=kl_weight,
                            mse_weight=mse_weight)


class TeacherLoss(nn.Module):
    """``ce_weight * CE(targets) + kl_weight * KL(teacher || student) + mse_weight * MSE(logits)``.

    ``teacher`` is an lmlab run directory or ``.ckpt``; it is loaded frozen and stays in eval mode
    (no dropout) while the student trains. ``forward(logits, targets, teacher_logits)``.

    The teacher is held outside the module tree: it follows the student's device and dtype moves, but
    it is not a parameter of the student's optimizer, DDP or checkpoints (which stay the student's
    size), and Lightning does not count its eval-mode layers as a mistake.
    """

    batches = "blocks"  # what it trains on (lmlab.tasks)

    @checked(rules=teacher_and_weights)
    def __init__(self, teacher: str, ce_weight: NonNegative = 0.0, kl_weight: NonNegative = 1.0,
                 mse_weight: NonNegative = 0.0, temperature: Positive = 1.0):
        super().__init__()
        model, self.teacher_tokenizer, _ = load_checkpoint(teacher, field="teacher")
        self._frozen = (model.requires_grad_(False).eval(),)  # a tuple: not registered as a submodule
        self.ce_weight, self.kl_weight, self.mse_weight = ce_weight, kl_weight, mse_weight
        self.temperature = temperature

    @property
    def teacher(self) -> nn.Module:
        return self._frozen[0]

    def _apply(self, fn, recurse: bool = True):  # .to(device), .half(), ...: what nn.Module moves, also the teacher
        self.teacher._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.ce_weight:
            loss = loss + self.ce_weight * _cross_entropy(logits, targets)
        if self.kl_weight:
            loss = loss + self.kl_weight * kl_divergence(logits, teacher_logits, self.temperature)
        if self.mse_weight:
            loss = loss + self.mse_weight * mse(logits.float(), teacher_logits.float())
        return loss
