"""μP learning rates and weight decay per parameter group (the optimizer's side of :mod:`lmlab.models.mup`).

A μP model's parameters are grouped by kind (:func:`mup_param_groups`): ``hidden`` (decayed), ``readout``
(an untied lm_head, decayed), ``embedding`` and ``vector`` (biases, norms; neither decayed, as in
``param_groups``); a kind whose weights have different width multipliers (SwiGLU's inner width rounds) is
split, the extra groups named ``<kind>_in<fan_in>_out<fan_out>``. Each group carries its multipliers
(``"mup"``); the optimizer turns them into an explicit ``lr = base lr x lr_multiplier`` when the group is
added (:func:`apply_lr_rule`), so every schedule, which multiplies each group's own initial LR, keeps the
ratios between groups at every step. The LR rules, relative to the base model (fan_in, fan_out: a
weight's width multipliers; m for a square hidden matrix):

==========================  ========================  ==================  ============================
optimizer (family)          hidden                    embedding, vector   readout
==========================  ========================  ==================  ============================
Adam, AdamW, Lion, torch    lr / fan_in               lr                  lr
Adam/AdamW/Adamax/NAdam/    (TP5 Table 8; MuAdam)
RAdam/Adagrad/RMSprop
SGD (lmlab, torch)          lr * fan_out / fan_in     lr * fan_out        lr * fan_in
                            (Table 8; MuSGD)          (Table 8; MuSGD)    (Table 8; MuSGD)
Muon, adjust_lr_fn=         lr (its orthogonalised    AdamW part: as      AdamW part: as Adam
original                    update has spectral norm  Adam
                            ~1 at every width; the
                            shape factor sqrt(max(1,
                            out/in)) is constant:
                            Yang, Simon & Bernstein
                            2023's spectral condition)
Muon, match_rms_adamw       lr / sqrt(max(fan_in,     as Adam             as Adam
                            fan_out)) (0.2 sqrt(max
                            dim) grows with width)
==========================  ========================  ==================  ============================

Weight decay: every group keeps ``lr x weight_decay`` of the standard parametrization, i.e. its
``weight_decay`` is divided by its LR multiplier (hidden Adam groups: wd x m). Decoupled decay multiplies
the weights by ``1 - lr * wd`` each step, so its time scale is 1 / (lr * wd) steps (Wang & Aitchison 2024,
"How to set AdamW's weight decay as you scale model and dataset size"); kept fixed, the decay shrinks the
init and the learned part of every weight by the same fraction at every width, which is what keeps μP's
width-independent dynamics (with wd left alone, a hidden matrix's decay per step would fall as 1/m and
vanish at large width, so a wd tuned on the proxy would not transfer). It is also what ``mup``'s MuAdam,
MuAdamW and MuSGD do (``weight_decay`` scaled inversely to the LR). The same rule applies to the L2 form
(Adam, SGD: ``g += wd * p``, a step of ``lr * wd * p``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
import torch.nn as nn

from lmlab.errors import ArgumentError
from lmlab.models.mup import KINDS, Role, parameter_roles
from lmlab.targets import locate

ADAM_LIKE_TORCH = ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad", "RMSprop")


def mup_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The parameters of a μP GPT grouped by kind and width multipliers (decay on hidden and readout
    matrices only, as :func:`lmlab.optim.param_groups`); each group's ``"mup"`` holds its role."""
    by_role: dict[Role, list[nn.Parameter]] = {}
    for p, role in parameter_roles(model).values():
        if p.requires_grad:
            by_role.setdefault(role, []).append(p)
    groups = []
    for kind in KINDS:
        roles = [role for role in by_role if role.kind == kind]
        for i, role in enumerate(roles):
            name = kind if i == 0 else f"{kind}_in{role.fan_in:.3g}_out{role.fan_out:.3g}"
            decay = weight_decay if kind in ("hidden", "readout") else 0.0
            groups.append({"params": by_role[role], "weight_decay": decay, "name": name,
                           "mup": {"kind": role.kind, "fan_in": role.fan_in, "fan_out": role.fan_out}})
    return groups


def adam_rule(role: dict, group: dict) -> float:
    return 1.0 / role["fan_in"] if role["kind"] == "hidden" else 1.0


def sgd_rule(role: dict, group: dict) -> float:
    if role["kind"] == "hidden":
        return role["fan_out"] / role["fan_in"]
    return role["fan_in"] if role["kind"] == "readout" else role["fan_out"]


def muon_rule(role: dict, group: dict) -> float:
    if not group.get("use_muon"):
        return adam_rule(role, group)
    if group.get("adjust_lr_fn", "original") == "match_rms_adamw":
        return 1.0 / math.sqrt(max(role["fan_in"], role["fan_out"]))
    return 1.0


def lr_rule(optimizer_cls: type, name: str = "cls") -> Callable[[dict, dict], float]:
    """The μP LR rule of an optimizer class; an ArgumentError naming ``name`` when it has none."""
    from lmlab.optim.adam import Adam
    from lmlab.optim.lion import Lion
    from lmlab.optim.muon import Muon
    from lmlab.optim.sgd import SGD

    families = [(Muon, muon_rule), (Adam, adam_rule), (Lion, adam_rule), (SGD, sgd_rule),
                (torch.optim.SGD, sgd_rule)] + [(getattr(torch.optim, n), adam_rule) for n in ADAM_LIKE_TORCH]
    for family, rule in families:
        if isinstance(optimizer_cls, type) and issubclass(optimizer_cls, family):
            return rule
    known = "lmlab's Adam, AdamW, Lion, SGD, Muon; torch.optim." + ", ".join((*ADAM_LIKE_TORCH, "SGD"))
    shown = f"{optimizer_cls.__module__}.{optimizer_cls.__qualname__}" if isinstance(optimizer_cls, type) \
        else optimizer_cls
    raise ArgumentError(name, shown, f"has no μP learning-rate rule, which a model with parametrization=mup "
                        f"needs; use one of: {known}")


def check_optimizer(target: object, cls: str | type | None = None) -> None:
    """Before any work (the config layer, when ``model.parametrization=mup``): the optimizer node's
    ``_target_`` (an optimizer class, or ``lmlab.optim.grouped`` with its ``cls``) has a μP rule; an
    ArgumentError naming ``_target_`` or ``cls`` otherwise."""
    from lmlab.optim.param_groups import grouped

    if target is grouped:
        lr_rule(locate(cls, "cls") if isinstance(cls, str) else cls, name="cls")
    else:
        lr_rule(target, name="_target_")


def apply_lr_rule(group: dict, rule: Callable[[dict, dict], float]) -> None:
    """Turn a μP group's role into ``lr_multiplier``, an explicit ``lr`` (base x multiplier) and a
    ``weight_decay`` divided by the multiplier (lr x wd unchanged); once per group (a group that already has
    ``lr_multiplier`` is left alone)."""
    if "mup" not in group or "lr_multiplier" in group:
        return
    multiplier = rule(group["mup"], group)
    group["lr_multiplier"] = multiplier
    group["lr"] = group["lr"] * multiplier
    group["weight_decay"] = group["weight_decay"] / multiplier


def torch_groups(groups: list[dict], cls: type, lr: float | None) -> list[dict]:
    """``param_groups(model)`` made ready for a torch optimizer class: μP groups get its LR rule applied to
    ``lr`` (the class's default when None); groups of a standard model come back unchanged."""
    if not any("mup" in group for group in groups):
        return groups
    rule = lr_rule(cls)
    if lr is None:
        lr = inspect.signature(cls).parameters["lr"].default
    for group in groups:
        group.setdefault("lr", lr)
        apply_lr_rule(group, rule)
    return groups
