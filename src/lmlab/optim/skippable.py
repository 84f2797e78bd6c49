"""Base for lmlab's optimizers: on-device step skipping and shared step counters.

Skipping. ``optimizer.skip_step`` is None or a 0-dim bool tensor on the parameters' device (set by the
stability callback). When it holds True, ``step()`` leaves parameters and all state (moments, step
counts) bit-identical, even if gradients hold NaN/inf; when False, the step is bit-identical to a step
with ``skip_step=None``. The decision stays on the device: gradients are replaced by zeros with
``torch.where`` (NaN/inf never enter the arithmetic) and every coefficient is selected with the flag
(moment weights 0, decay factors 1, update scales 0); no ``.item()``, no Python branch on a tensor.
Cost: one extra elementwise pass over the gradients while a flag is set.

Step counters. Bias corrections need the step count on the device (a host count could not see a skip).
The count lives in ``state["step"]`` (float32, 0-dim, like torch's fused/capturable Adam), but all
parameters of one group, device and dtype that have been stepped together share one counter tensor,
so the optimizer computes one set of coefficients per *cohort* and runs its ``torch._foreach_*`` ops
with 0-dim tensor scalars (a single multi-tensor kernel on CUDA) instead of per-parameter scalars.
A parameter that misses a gradient while its cohort steps gets its own copy of the counter, so counts
stay exact per parameter, as in torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.optim import Optimizer

from lmlab.numerics import at_least_float32_dtype
from lmlab.optim.mup import apply_lr_rule, lr_rule
from lmlab.optim.param_groups import param_groups


@dataclass
class Cohort:
    """Parameters of one group, device and dtype that share a step counter, with their grads and states."""

    params: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)
    states: list[dict] = field(default_factory=list)
    step: torch.Tensor | None = None  # the shared counter, already advanced for this step
    skip: torch.Tensor | None = None  # 0-dim bool on this device, or None (never skip)
    new: bool = False  # state created in this step (the parameters' first step with a gradient)

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    def state_list(self, key: str) -> list[torch.Tensor]:
        return [s[key] for s in self.states]

    def scalar(self, value: float, if_skipped: float) -> float | torch.Tensor:
        """``value`` as a Python float when never skipping, else a 0-dim tensor: ``if_skipped`` on a skip."""
        if self.skip is None:
            return value
        full = torch.full((), value, dtype=at_least_float32_dtype(self.dtype), device=self.device)
        return torch.where(self.skip, if_skipped, full)

    def zero_if_skipped(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """``tensors`` (gradients), each replaced by zeros on a skipped step.

        Replacing (``torch.where``) rather than multiplying keeps NaN/inf gradients out of the arithmetic.
        With no skip flag the tensors themselves come back (no copy, no extra kernels).
        """
        if self.skip is None:
            return tensors
        return [torch.where(self.skip, 0.0, t) for t in tensors]

    def lerp_(self, tensors: list[torch.Tensor], ends: list[torch.Tensor], weight: float) -> None:
        """``tensors += weight * (ends - tensors)`` in place, with weight 0 (bit-exact no-op) on a skip."""
        if self.skip is None:
            torch._foreach_lerp_(tensors, ends, weight)
        else:
            torch._foreach_lerp_(tensors, ends, [self.scalar(weight, if_skipped=0.0)] * len(tensors))


class SkippableOptimizer(Optimizer):
    """``torch.optim.Optimizer`` with ``skip_step`` and cohort counters; subclasses define ``update``.

    ``params`` is what torch optimizers take (tensors or param-group dicts) or a whole model, whose
    parameters the optimizer then groups itself with ``group_parameters`` (weight decay on matrices
    only). That is the optimizer contract of ``LitLM``: it calls ``optimizer_factory(model)``.
    """

    def __init__(self, params: Iterable | nn.Module, defaults: dict):
        if isinstance(params, nn.Module):
            params = self.group_parameters(params, defaults.get("weight_decay", 0.0))
        super().__init__(params, defaults)
        self.skip_step: torch.Tensor | None = None

    @staticmethod
    def group_parameters(model: nn.Module, weight_decay: float) -> list[dict]:
        return param_groups(model, weight_decay)

    def add_param_group(self, param_group: dict) -> None:
        """torch's, then a μP group's LR multiplier (``lmlab.optim.mup``): an explicit lr = base x multiplier."""
        super().add_param_group(param_group)
        if "mup" in param_group:
            apply_lr_rule(self.param_groups[-1], lr_rule(type(self), name="params"))

    def init_state(self, param: torch.Tensor, group: dict) -> dict:
        """New per-parameter state tensors (besides ``step``)."""
        raise NotImplementedError

    def update(self, group: dict, cohort: Cohort) -> None:
        """Apply one step to a cohort whose counter has already been advanced."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for cohort in self.cohorts(group):
                self.update(group, cohort)
        return loss

    def _skip_on(self, device: torch.device) -> torch.Tensor | None:
        if self.skip_step is None:
            return None
        return self.skip_step.to(device=device, dtype=torch.bool, non_blocking=True)

    def cohorts(self, group: dict) -> list[Cohort]:
        """Group the parameters with grads into cohorts and advance each cohort's counter (unless skipped)."""
        cohorts: dict[tuple, Cohort] = {}
        new_counters: dict[tuple, torch.Tensor] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            if "step" not in state:
                state.update(self.init_state(p, group))
                if (p.device, p.dtype) not in new_counters:
                    new_counters[p.device, p.dtype] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["step"] = new_counters[p.device, p.dtype]
            counter = state["step"]
            new = any(counter is c for c in new_counters.values())
            cohort = cohorts.setdefault((p.device, p.dtype, id(counter)), Cohort(step=counter, new=new))
            cohort.params.append(p)
            cohort.grads.append(p.grad)
            cohort.states.append(state)
        if any(p.grad is None for p in group["params"]):  # a counter's sharers without a grad: split them off
            states = (self.state.get(p, {}) for p in group["params"])
            users = Counter(id(state["step"]) for state in states if "step" in state)
            for cohort in cohorts.values():
                if len(cohort.params) < users[id(cohort.step)]:
                    cohort.step = cohort.step.clone()
                    for state in cohort.states:
                        state["step"] = cohort.step
        for cohort in cohorts.values():
            cohort.skip = self._skip_on(cohort.device)
            cohort.step.add_(1.0 if cohort.skip is None else (~cohort.skip).float())
        return list(cohorts.values())

    def load_state_dict(self, state_dict: dict) -> None:
        """Load, then rebuild the shared counters: a checkpoint may alias or copy them (one read, at load)."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            shared: dict[tuple, torch.Tensor] = {}
            for p in group["params"]:
                state = self.state.get(p, {})
                if "step" not in state:
                    continue
                key = (p.device, p.dtype, float(state["step"]))
                if key not in shared:
                    shared[key] = torch.tensor(key[2], dtype=torch.float32, device=p.device)
                state["step"] = shared[key]
