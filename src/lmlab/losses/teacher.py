"""Losses against a frozen teacher checkpoint: distillation (CE + KL) and logit matching (MSE)."""

from __future__ import annotations

import torch
import torch.nn as nn

from lmlab.checkpoint import load_checkpoint
from lmlab.losses.distillation import kl_divergence
from lmlab.losses.language_modeling import cross_entropy
from lmlab.losses.regression import mse


class TeacherLoss(nn.Module):
    """``ce_weight * CE(targets) + kl_weight * KL(teacher || student) + mse_weight * MSE(logits)``.

    ``teacher`` is an lmlab run directory or ``.ckpt``; it is loaded frozen and stays in eval mode
    (no dropout) while the student trains. ``forward(logits, targets, teacher_logits)``.

    The teacher is held outside the module tree: it follows the student's device and dtype moves, but
    it is not a parameter of the student's optimizer, DDP or checkpoints (which stay the student's
    size), and Lightning does not count its eval-mode layers as a mistake.
    """

    def __init__(self, teacher: str, ce_weight: float = 0.0, kl_weight: float = 1.0, mse_weight: float = 0.0,
                 temperature: float = 1.0):
        super().__init__()
        for name, weight in (("ce_weight", ce_weight), ("kl_weight", kl_weight), ("mse_weight", mse_weight)):
            if weight < 0:
                raise ValueError(f"loss.{name}={weight} must be >= 0")
        if temperature <= 0:
            raise ValueError(f"loss.temperature={temperature} must be > 0")
        model, self.teacher_tokenizer, _ = load_checkpoint(teacher, field="loss.teacher")
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
            loss = loss + self.ce_weight * cross_entropy(logits, targets)
        if self.kl_weight:
            loss = loss + self.kl_weight * kl_divergence(logits, teacher_logits, self.temperature)
        if self.mse_weight:
            loss = loss + self.mse_weight * mse(logits.float(), teacher_logits.float())
        return loss
