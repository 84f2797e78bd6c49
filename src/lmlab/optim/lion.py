"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms")."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from lmlab.arguments import Betas, NonNegative, Positive, checked
from lmlab.optim.skippable import Cohort, SkippableOptimizer


class Lion(SkippableOptimizer):
    """Sign of an interpolation between momentum and gradient; one moment, decoupled weight decay.

    ``c = b1*m + (1-b1)*g;  p = p*(1 - lr*wd) - lr*sign(c);  m = b2*m + (1-b2)*g``.
    Every coordinate moves by exactly lr, so Lion wants a 3-10x smaller lr than AdamW and a larger wd.
    """

    @checked
    def __init__(
        self,
        params: Iterable | nn.Module,
        lr: Positive = 1e-4,
        betas: Betas = (0.9, 0.99),
        weight_decay: NonNegative = 0.0,
    ):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    def init_state(self, param: torch.Tensor, group: dict) -> dict:
        return {"exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def update(self, group: dict, cohort: Cohort) -> None:
        lr, (beta1, beta2), weight_decay = group["lr"], group["betas"], group["weight_decay"]
        params, exp_avgs = cohort.params, cohort.state_list("exp_avg")
        grads = cohort.zero_if_skipped(cohort.grads)
        if weight_decay:
            torch._foreach_mul_(params, cohort.scalar(1.0 - lr * weight_decay, if_skipped=1.0))
        directions = torch._foreach_lerp(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_sign_(directions)
        if cohort.skip is not None:
            torch._foreach_mul_(directions, cohort.scalar(1.0, if_skipped=0.0))
        torch._foreach_add_(params, directions, alpha=-lr)
        cohort.lerp_(exp_avgs, grads, 1.0 - beta2)
