"""SGD with momentum, dampening, Nesterov and L2 weight decay, as in torch.optim.SGD."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from lmlab.arguments import Beta, NonNegative, Positive, Probability, checked
from lmlab.errors import ArgumentError
from lmlab.optim.skippable import Cohort, SkippableOptimizer


def nesterov_needs_momentum(momentum: float, dampening: float, nesterov: bool) -> None:
    if nesterov and (momentum == 0 or dampening != 0):
        raise ArgumentError("nesterov", nesterov, "needs momentum > 0 ({momentum}) and no dampening ({dampening})",
                            momentum=momentum, dampening=dampening)


class SGD(SkippableOptimizer):
    """``g += wd*p``; ``buf = momentum*buf + (1-dampening)*g`` (``buf = g`` at the first step);
    ``p -= lr * (g + momentum*buf if nesterov else buf)``."""

    @checked(rules=nesterov_needs_momentum)
    def __init__(
        self,
        params: Iterable | nn.Module,
        lr: Positive = 1e-3,
        momentum: Beta = 0.0,
        dampening: Probability = 0.0,
        weight_decay: NonNegative = 0.0,
        nesterov: bool = False,
    ):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
        super().__init__(params, {**defaults, "nesterov": nesterov})

    def init_state(self, param: torch.Tensor, group: dict) -> dict:
        if not group["momentum"]:
            return {}
        return {"momentum_buffer": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def update(self, group: dict, cohort: Cohort) -> None:
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        params, grads = cohort.params, cohort.grads
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        grads = cohort.zero_if_skipped(grads)
        if momentum:
            buffers = cohort.state_list("momentum_buffer")
            torch._foreach_mul_(buffers, cohort.scalar(momentum, if_skipped=1.0))
            # torch starts the buffer as the first gradient, undamped. (After a skip on a parameter's very
            # first step the buffer starts from zero and damped instead: the only difference.)
            torch._foreach_add_(buffers, grads, alpha=1.0 if cohort.new else 1.0 - dampening)
            grads = torch._foreach_add(grads, buffers, alpha=momentum) if group["nesterov"] else buffers
        if cohort.skip is not None:
            grads = torch._foreach_mul(grads, cohort.scalar(1.0, if_skipped=0.0))
        torch._foreach_add_(params, grads, alpha=-lr)
