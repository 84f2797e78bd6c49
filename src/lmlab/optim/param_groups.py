"""Split parameters into weight-decayed and non-decayed groups, and build torch optimizers with them."""

from __future__ import annotations

import torch.nn as nn
from torch.optim import Optimizer

from lmlab.arguments import NonNegative, checked
from lmlab.models.mup import is_mup
from lmlab.optim.mup import mup_param_groups, torch_groups
from lmlab.targets import locate


def _is_norm(module: nn.Module) -> bool:
    # torch's LayerNorm/RMSNorm/GroupNorm and Hugging Face's own norm classes (LlamaRMSNorm, ...)
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)) or "Norm" in type(module).__name__


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: biases, norm scales and embedding tables (tied or not) get no decay.

    A μP model's groups are split further by kind and width (``lmlab.optim.mup.mup_param_groups``: hidden,
    embedding, vector, readout, the same decay policy); the optimizer applies their LR multipliers."""
    if is_mup(model):
        return mup_param_groups(model, weight_decay)
    no_decay = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding) or _is_norm(module):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, rest = [], []
    for p in model.parameters():  # parameters() yields a tied tensor once
        if not p.requires_grad:
            continue
        (rest if id(p) in no_decay or p.ndim < 2 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": rest, "weight_decay": 0.0, "name": "no_decay"},
    ]


def torch_optimizer_arguments(cls: str | type[Optimizer], weight_decay: float, model=None, **kwargs) -> None:
    """``cls`` names an optimizer, and the other arguments (but the model) are its own, checked against its
    signature."""
    from lmlab.arguments import check_arguments

    target = locate(cls, "cls") if isinstance(cls, str) else cls
    check_arguments(target, {**kwargs, "weight_decay": weight_decay}, runtime=("params",))


@checked(rules=torch_optimizer_arguments)
def grouped(model: nn.Module, cls: str | type[Optimizer], weight_decay: NonNegative = 0.0, **kwargs) -> Optimizer:
    """A torch optimizer (class or dotted path, e.g. ``torch.optim.AdamW``) over ``param_groups(model)``.

    lmlab's own optimizers take the model directly; this gives any other optimizer the same contract
    (``factory(model) -> optimizer``), the same weight-decay policy and, for a μP model, the same per-group
    learning rates (an ArgumentError naming ``cls`` if it has no μP rule)."""
    cls = locate(cls, "cls") if isinstance(cls, str) else cls
    groups = torch_groups(param_groups(model, weight_decay), cls, kwargs.get("lr"))
    return cls(groups, weight_decay=weight_decay, **kwargs)
