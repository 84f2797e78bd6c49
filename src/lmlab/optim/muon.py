"""Muon (Jordan et al., 2024): orthogonalised momentum for hidden-layer matrices, AdamW for the rest.

Which parameters get Muon (the rule):
- A param group flagged ``use_muon=True`` is Muon, ``use_muon=False`` is AdamW.
- A group without the flag is split: its 2-D parameters go to Muon, everything else to AdamW.
- Given a model (``Muon(model, ...)``, as ``LitLM`` builds it), the groups come from
  ``muon_param_groups(model, weight_decay)``: it flags as Muon the
  2-D parameters that are neither embedding tables (``nn.Embedding``, tied or not) nor the output head
  (``get_output_embeddings()`` of Hugging Face models, any module named ``lm_head``). Embeddings, the
  head, norms and biases go to the internal AdamW; they are not hidden-layer transforms, and
  orthogonalising a vocabulary-sized matrix is both slow and harmful.

AdamW groups use ``adamw_lr``, ``adamw_betas`` and ``adamw_eps`` (unless a ``use_muon=False`` group sets
its own ``lr``/``betas``/``eps``); ``weight_decay`` comes from the group, as for any optimizer. A
learning-rate schedule scales every group's base LR, so both parts follow it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Annotated, Literal

import annotated_types as at
import torch
import torch.nn as nn

from lmlab.arguments import Beta, Betas, NonNegative, Positive, PositiveInt, checked
from lmlab.optim.adam import adam_update
from lmlab.optim.param_groups import param_groups
from lmlab.optim.skippable import Cohort, SkippableOptimizer

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(
    matrix: torch.Tensor, steps: int = 5, coefficients: Sequence[float] = NS_COEFFICIENTS, eps: float = 1e-7
) -> torch.Tensor:
    """Approximately U V^T of ``matrix = U S V^T``, in bfloat16, by a quintic Newton-Schulz iteration.

    Each step maps X -> aX + b(XX^T)X + c(XX^T)^2 X. The coefficients maximise the slope at zero, so small
    singular values grow fast; the price is that the iteration does not converge to exactly 1 but
    oscillates in a band around it (about 0.7 to 1.2 after 5 steps), which does not hurt training.
    The input is scaled by its Frobenius norm first so that every singular value is <= 1.
    """
    a, b, c = coefficients
    x = matrix.bfloat16()
    tall = matrix.size(0) > matrix.size(1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, polynomial, x, beta=a)
    return x.T if tall else x


def adjusted_lr(lr: float, shape: torch.Size, adjust_lr_fn: str) -> float:
    """Shape-dependent LR. ``original`` (Keller Jordan): sqrt(max(1, rows/cols)) keeps the update RMS
    alike across rectangular shapes; ``match_rms_adamw`` (Moonshot): 0.2*sqrt(max(rows, cols)) matches
    AdamW's update RMS."""
    rows, cols = shape
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1.0, rows / cols))


def _output_head_ids(model: nn.Module) -> set[int]:
    heads = [m.get_output_embeddings() for m in model.modules() if hasattr(m, "get_output_embeddings")]
    heads += [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "lm_head"]
    return {id(p) for head in heads if head is not None for p in head.parameters()}


def muon_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """``param_groups(model, weight_decay)``, each split into Muon (hidden matrices) and AdamW parts."""
    not_hidden = _output_head_ids(model)
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            not_hidden.update(id(p) for p in module.parameters(recurse=False))
    groups = []
    for group in param_groups(model, weight_decay):
        for use_muon in (True, False):
            selected = [p for p in group["params"] if (p.ndim == 2 and id(p) not in not_hidden) == use_muon]
            if selected:
                groups.append({**group, "params": selected, "use_muon": use_muon})
    return groups


class Muon(SkippableOptimizer):
    """Muon for 2-D hidden weights plus AdamW for every other parameter, in one optimizer.

    Muon step (as ``torch.optim.Muon`` and the reference implementation): ``buf = lerp(buf, g, 1-momentum)``;
    direction ``lerp(g, buf, momentum)`` (Nesterov) or ``buf``; ``O = newton_schulz(direction)``;
    ``p *= 1 - lr*wd``; ``p -= adjusted_lr(lr, shape) * O``. See the module docstring for the param rule.
    """

    @checked
    def __init__(
        self,
        params: Iterable | nn.Module,
        lr: Positive = 0.02,
        weight_decay: NonNegative = 0.0,
        momentum: Beta = 0.95,
        nesterov: bool = True,
        ns_coefficients: Annotated[Sequence[float], at.Len(3, 3)] = NS_COEFFICIENTS,
        eps: NonNegative = 1e-7,
        ns_steps: PositiveInt = 5,
        adjust_lr_fn: Literal["original", "match_rms_adamw"] = "original",
        adamw_lr: Positive = 3e-4,
        adamw_betas: Betas = (0.9, 0.95),
        adamw_eps: NonNegative = 1e-8,
    ):
        self.adamw_defaults = {"lr": adamw_lr, "betas": tuple(adamw_betas), "eps": adamw_eps}
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
            ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
        )  # fmt: skip
        super().__init__(params, defaults)

    group_parameters = staticmethod(muon_param_groups)

    def add_param_group(self, param_group: dict) -> None:
        """Split an unflagged group by ``ndim == 2``; fill AdamW groups from the ``adamw_*`` arguments."""
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        if "use_muon" not in param_group:
            adamw_part = {k: v for k, v in param_group.items() if k not in self.adamw_defaults}
            for flag, group in ((True, param_group), (False, adamw_part)):
                selected = [p for p in params if (p.ndim == 2) == flag]
                if selected:
                    self.add_param_group({**group, "params": selected, "use_muon": flag})
            return
        if param_group["use_muon"]:
            for p in params:
                if p.ndim != 2:
                    raise ValueError(f"Muon needs 2-D params; a use_muon=True group holds {tuple(p.shape)}")
            super().add_param_group({**param_group, "params": params})
        else:
            super().add_param_group({**self.adamw_defaults, **param_group, "params": params})

    def init_state(self, param: torch.Tensor, group: dict) -> dict:
        zeros = lambda: torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["use_muon"]:
            return {"momentum_buffer": zeros()}
        return {"exp_avg": zeros(), "exp_avg_sq": zeros()}

    def update(self, group: dict, cohort: Cohort) -> None:
        lr, weight_decay = group["lr"], group["weight_decay"]
        if not group["use_muon"]:
            adam_update(cohort, lr, group["betas"], group["eps"], weight_decay, decoupled=True)
            return
        momentum, params = group["momentum"], cohort.params
        buffers = cohort.state_list("momentum_buffer")
        grads = cohort.zero_if_skipped(cohort.grads)
        cohort.lerp_(buffers, grads, 1.0 - momentum)
        directions = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers
        if weight_decay:
            torch._foreach_mul_(params, cohort.scalar(1.0 - lr * weight_decay, if_skipped=1.0))
        keep = None if cohort.skip is None else cohort.scalar(1.0, if_skipped=0.0)
        for param, direction in zip(params, directions, strict=True):
            update = newton_schulz(direction, group["ns_steps"], group["ns_coefficients"], group["eps"])
            if keep is not None:
                update = update * keep
            param.add_(update, alpha=-adjusted_lr(lr, param.shape, group["adjust_lr_fn"]))
