"""Adam and AdamW with torch's exact update, as multi-tensor ``torch._foreach_*`` ops."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from lmlab.arguments import Betas, NonNegative, Positive, checked
from lmlab.numerics import at_least_float32_dtype
from lmlab.optim.skippable import Cohort, SkippableOptimizer


def _denominator_coefficients(
    cohort: Cohort, lr: float, beta1: float, beta2: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, offset) with ``lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) == m / (sqrt(v) * scale + offset)``.

    Folding the bias corrections into the denominator keeps the op count of torch's foreach Adam while
    every per-step scalar stays a 0-dim device tensor. Computed in float64 from the shared step counter.
    On a skipped step scale = 0 and offset = inf, so the update m / inf is exactly 0.
    """
    step = cohort.step.to(torch.float64)
    bias_correction1 = 1.0 - torch.pow(beta1, step)
    bias_correction2_sqrt = torch.sqrt(1.0 - torch.pow(beta2, step))
    scale = bias_correction1 / (lr * bias_correction2_sqrt)
    offset = bias_correction1 * (eps / lr)
    if cohort.skip is not None:
        scale = torch.where(cohort.skip, 0.0, scale)
        offset = torch.where(cohort.skip, math.inf, offset)
    dtype = at_least_float32_dtype(cohort.dtype)
    return scale.to(dtype), offset.to(dtype)


def adam_update(
    cohort: Cohort, lr: float, betas: Sequence[float], eps: float, weight_decay: float, decoupled: bool
) -> None:
    """One Adam(W) step on a cohort whose step counter is already advanced.

    Same math as ``torch.optim.Adam``/``AdamW``: decoupled decay ``p *= 1 - lr*wd`` first (AdamW) or
    L2 ``g += wd*p`` (Adam); ``m = lerp(m, g, 1-b1)``; ``v = b2*v + (1-b2)*g^2``;
    ``p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)``.
    """
    beta1, beta2 = betas
    params, grads = cohort.params, cohort.grads
    exp_avgs, exp_avg_sqs = cohort.state_list("exp_avg"), cohort.state_list("exp_avg_sq")
    if weight_decay and decoupled:
        torch._foreach_mul_(params, cohort.scalar(1.0 - lr * weight_decay, if_skipped=1.0))
    elif weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    grads = cohort.zero_if_skipped(grads)
    cohort.lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, cohort.scalar(beta2, if_skipped=1.0))
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    scale, offset = _denominator_coefficients(cohort, lr, beta1, beta2, eps)
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_mul_(denominators, scale)
    torch._foreach_add_(denominators, offset, alpha=1)  # alpha: the Tensor overload (without it, .item())
    torch._foreach_addcdiv_(params, exp_avgs, denominators, value=-1.0)


class Adam(SkippableOptimizer):
    """Adam (Kingma & Ba, 2015); ``weight_decay`` is an L2 term added to the gradient, as in torch.

    Defaults are those language models train with (GPT-3, Llama): betas (0.9, 0.95)."""

    @checked
    def __init__(
        self,
        params: Iterable | nn.Module,
        lr: Positive = 1e-3,
        betas: Betas = (0.9, 0.95),
        eps: NonNegative = 1e-8,
        weight_decay: NonNegative = 0.0,
        decoupled_weight_decay: bool = False,
    ):
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
        )  # fmt: skip
        super().__init__(params, defaults)

    def init_state(self, param: torch.Tensor, group: dict) -> dict:
        return {
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
        }

    def update(self, group: dict, cohort: Cohort) -> None:
        adam_update(
            cohort, group["lr"], group["betas"], group["eps"], group["weight_decay"],
            decoupled=group["decoupled_weight_decay"],
        )  # fmt: skip


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): decay decoupled from the gradient, ``p *= 1 - lr*wd``, on matrices
    only when given a model (lmlab.optim.param_groups); weight decay 0.1 as language models train."""

    @checked
    def __init__(
        self,
        params: Iterable | nn.Module,
        lr: Positive = 1e-3,
        betas: Betas = (0.9, 0.95),
        eps: NonNegative = 1e-8,
        weight_decay: NonNegative = 0.1,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled_weight_decay=True)
