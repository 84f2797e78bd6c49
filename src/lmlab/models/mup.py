"""μP (maximal update parametrization) for lmlab's GPT: the model's side of the rules.

With μP the best learning rate and init scale stop depending on the width, so a search on a narrow proxy
carries over to a wide model (Yang et al. 2022, "Tensor Programs V", arXiv:2203.03466). Everything is
relative to a *base* model, this model at ``n_embd = mup_base_width`` (heads, depth, vocabulary unchanged):
at the base width μP is exactly the standard parametrization, so an LR tuned there stays right, and each
weight's width multiplier is ``its dimension / the base model's dimension`` (``m = n_embd / mup_base_width``
for everything but the MLP's inner width, which has its own ratio). The rules, in the form of TP5 Table 8
("compatible with input/output weight sharing"), relative to the base model as in the ``mup`` library
(``set_base_shapes``, ``MuReadout``, ``MuAdam``, ``MuSGD``):

=============================  ===================================  ========================  ==================
weight (kind)                  init                                 forward multiplier        Adam-family LR
=============================  ===================================  ========================  ==================
hidden: q/k/v, attention out,  std / sqrt(fan_in multiplier)        1                         lr / fan_in mult
MLP in/gate/out (``hidden``)   (variance / m; TP5 Table 8)                                    (Table 8)
embeddings wte, wpe            unchanged (std 0.02)                 1                         lr
(``embedding``)
biases, norm scales            unchanged                            1                         lr
(``vector``)
readout lm_head (``readout``;  unchanged: std 0.02, constant in     logits x 1/m              lr
tied: it is wte)               width (Table 8: init var 1);         (MuReadout: x/width_mult)
                               or zero (``readout_zero_init``)
attention scores               -                                    q.k * sqrt(d_base) / d    -
                                                                    (TP5 Def. 4.1: 1/d, not
                                                                    1/sqrt(d); d = head dim)
=============================  ===================================  ========================  ==================

Optimizers other than the Adam family (SGD, Muon) and weight decay: :mod:`lmlab.optim.mup`. A tied table
is input and readout at once; Table 8 gives both the same init (constant) and the same Adam LR, which is
why tying needs nothing more than the 1/m on the logits (the table is used unchanged as the input).
The residual projections keep their depth factor 1/sqrt(2 n_layer) (depth is not what μP varies).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn

from lmlab.errors import ArgumentError

KINDS = ("hidden", "embedding", "vector", "readout")


def mup_rules(parametrization: str, mup_base_width: int, n_head: int, position: str, tie_embeddings: bool,
              readout_zero_init: bool) -> None:
    """GPTConfig's μP arguments together: a base model that exists, a readout that can be zeroed."""
    if readout_zero_init and tie_embeddings:
        raise ArgumentError("readout_zero_init", True, "needs an untied readout: with {tie_embeddings} the table "
                            "is also the input embedding", tie_embeddings=True)
    if parametrization != "mup":
        return
    if mup_base_width % n_head:
        raise ArgumentError("mup_base_width", mup_base_width, "must be divisible by {n_head}: the base model "
                            "(n_embd = mup_base_width, same heads) needs a whole head dimension", n_head=n_head)
    if position == "rope" and (mup_base_width // n_head) % 2:
        raise ArgumentError("mup_base_width", mup_base_width, "with {position} the base model's head dimension "
                            "(mup_base_width / {n_head}) must be even", position="rope", n_head=n_head)


def is_mup(model: nn.Module) -> bool:
    """Whether ``model`` is lmlab's GPT under μP (Hugging Face models have no such option)."""
    return getattr(getattr(model, "config", None), "parametrization", "standard") == "mup"


def width_multiplier(config) -> float:
    """m = n_embd / mup_base_width."""
    return config.n_embd / config.mup_base_width


def attention_scale(config) -> float | None:
    """The attention logits' scale: None (SDPA's 1/sqrt(d)) for standard; sqrt(d_base)/d for μP, written
    so that at d = d_base it is exactly 1/sqrt(d_base), SDPA's own default."""
    if config.parametrization != "mup":
        return None
    head_dim, base_head_dim = config.n_embd // config.n_head, config.mup_base_width // config.n_head
    return (1.0 / math.sqrt(base_head_dim)) * (base_head_dim / head_dim)


def readout_multiplier(config) -> float | None:
    """What the readout's input is multiplied by: None (nothing) for standard, 1/m for μP."""
    return 1.0 / width_multiplier(config) if config.parametrization == "mup" else None


@dataclass(frozen=True)
class Role:
    """A parameter's μP kind and width multipliers (its dimensions over the base model's): ``fan_in`` and
    ``fan_out`` as mup's InfShape sees a weight [out, in]; a vector-like weight (one dimension grows with
    width) has its multiplier in the dimension that grows and 1 in the other."""

    kind: str
    fan_in: float = 1.0
    fan_out: float = 1.0


def parameter_roles(model: nn.Module) -> dict[str, tuple[nn.Parameter, Role]]:
    """{name: (parameter, role)} for every parameter of a μP GPT (a tied table once, as ``embedding``).

    The base shapes come from the same model built at the base width on the meta device (no memory)."""
    config = model.config
    base_config = {**asdict(config), "n_embd": config.mup_base_width, "parametrization": "standard",
                   "readout_zero_init": False}
    with torch.device("meta"):
        base = type(model)(**base_config)
    base_shapes = {name: p.shape for name, p in base.named_parameters()}
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    readout = id(model.lm_head.weight)
    roles = {}
    for name, p in model.named_parameters():
        ratio = [size / base_size for size, base_size in zip(p.shape, base_shapes[name], strict=True)]
        if id(p) in embeddings:
            role = Role("embedding", fan_out=ratio[1])
        elif id(p) == readout:
            role = Role("readout", fan_in=ratio[1])
        elif p.ndim == 2:
            role = Role("hidden", fan_in=ratio[1], fan_out=ratio[0])
        else:
            role = Role("vector", fan_out=ratio[0])
        roles[name] = (p, role)
    return roles


@torch.no_grad()
def apply_mup_init(model: nn.Module) -> None:
    """Rescale the standard init of a μP GPT's hidden matrices: std / sqrt(fan_in multiplier), i.e. the
    variance / m (exactly the standard init at the base width, where the factor is 1)."""
    for p, role in parameter_roles(model).values():
        if role.kind == "hidden":
            p.mul_(1.0 / math.sqrt(role.fan_in))


def as_standard(state: dict[str, torch.Tensor], config) -> tuple[dict[str, torch.Tensor], object]:
    """The weights and config of a standard-parametrization GPT computing what this μP one computes (any other
    model is returned as it is): the logits' 1/m folded into ``lm_head`` (untied from the embedding, which keeps
    its own scale) and the attention scale into the query rows (q.k * s = (q * s sqrt(d)) . k / sqrt(d); RoPE is
    linear, so the rotation commutes). What other tools run is the standard forward (lmlab.export)."""
    if config.parametrization != "mup":
        return state, config
    state, changes = dict(state), {"parametrization": "standard", "readout_zero_init": False}
    multiplier = readout_multiplier(config)
    if multiplier != 1.0:
        state["lm_head.weight"] = state["lm_head.weight"] * multiplier
        changes["tie_embeddings"] = False
    query_factor = attention_scale(config) * math.sqrt(config.n_embd // config.n_head)
    if query_factor != 1.0:
        for name in [n for n in state if ".attn.qkv." in n]:
            scaled = state[name].clone()
            scaled[: config.n_embd] *= query_factor
            state[name] = scaled
    return state, replace(config, **changes)
