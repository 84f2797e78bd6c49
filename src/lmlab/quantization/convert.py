"""``quantize(model, mode, ...)``: replace the Linear layers of an lmlab or Hugging Face causal LM.

Every nn.Linear (and Hugging Face's GPT-2 ``Conv1D``) becomes a :class:`QuantizedLinear`; the
token and position embeddings and the LM head stay in float unless ``embeddings=True``. With tied
embeddings (lmlab's GPT and GPT-2 tie the LM head to the token embedding) both are one quantized
tensor. Module names (for ``skip`` patterns and checkpoints) are those of lmlab's GPT, or of the
Hugging Face ``PreTrainedModel`` (also when it is wrapped in ``HFCausalLM``), e.g.
``blocks.0.attn.qkv`` or ``transformer.h.0.attn.c_attn``.

Every check runs before the first layer is touched, so a bad argument leaves the model as it was.
"""

from __future__ import annotations

import fnmatch
import math
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn as nn

from lmlab.arguments import PositiveInt, checked
from lmlab.errors import ArgumentError, InputError
from lmlab.quantization.layers import QuantizedEmbedding, QuantizedLinear, QuantizedWeight, TiedEmbedding

Mode = Literal["int8", "int4"]
MODES = typing.get_args(Mode)
DEFAULT_GROUP_SIZE = 64


@dataclass(frozen=True)
class QuantizationSettings:
    """What ``quantize`` did; stored with a quantized model and in its checkpoint."""

    mode: str
    group_size: int | None = None  # int4: input columns per scale
    symmetric: bool = False  # int4: no offsets (int8 is always symmetric)
    embeddings: bool = False  # also the embeddings and the LM head
    skip: tuple[str, ...] = ()  # fnmatch patterns of module names left in float
    matmul_dtype: str | None = None  # int8: "bfloat16" or "float32" (None: the fastest for the device, int8.py)

    def to_dict(self) -> dict:
        return {**asdict(self), "skip": list(self.skip)}

    @classmethod
    def from_dict(cls, settings: dict) -> QuantizationSettings:
        return cls(**{**settings, "skip": tuple(settings.get("skip", ()))})


def settings_fit_mode(mode: str, group_size: int | None, matmul_dtype: str | None) -> None:
    """Group sizes are int4's, bfloat16 matmuls int8's."""
    if mode == "int8" and group_size is not None:
        raise ArgumentError("group_size", group_size, "applies to int4 only (int8 has one scale per output channel); "
                            "leave it unset with {mode}", mode=mode)
    if matmul_dtype is not None and mode != "int8":
        raise ArgumentError("matmul_dtype", matmul_dtype, "applies to int8 only ({mode})", mode=mode)


@checked(rules=settings_fit_mode)
def quantization_settings(mode: Mode, group_size: PositiveInt | None = None, skip: str | Sequence[str] = (),
                          embeddings: bool = False, symmetric: bool = False,
                          matmul_dtype: Literal["bfloat16", "float32"] | None = None) -> QuantizationSettings:
    """Checked settings (no model needed, so command lines check them before loading anything). A caller
    that names these arguments otherwise renames its errors (``ArgumentError.renamed``)."""
    if mode == "int4" and group_size is None:
        group_size = DEFAULT_GROUP_SIZE
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    if not all(skip):
        raise ArgumentError("skip", list(skip), "must be module-name patterns (e.g. 'blocks.0.*')")
    return QuantizationSettings(mode, group_size, bool(symmetric) and mode == "int4", bool(embeddings), skip,
                                matmul_dtype)


# how the decoding callback and generate.py name the settings: quantize=int4 quantize_group_size=32
QUANTIZE_NAMES = {"mode": "quantize", "group_size": "quantize_group_size"}


def quantization_of(quantize: str | None, quantize_group_size: int | None) -> QuantizationSettings | None:
    """The settings of the quantized copy this callback also evaluates (None: none), its errors named as the
    callback's arguments."""
    if quantize is None:
        if quantize_group_size is not None:
            raise ArgumentError("quantize_group_size", quantize_group_size, "is set but {quantize}: give "
                                "quantize=int4 (group sizes apply to int4)", quantize=quantize)
        return None
    try:
        return quantization_settings(quantize, quantize_group_size)
    except ArgumentError as e:
        raise e.renamed(QUANTIZE_NAMES) from None



def quantize(model: nn.Module, mode: str | QuantizationSettings, group_size: int | None = None, skip=(),
             embeddings: bool = False, symmetric: bool = False, matmul_dtype: str | None = None) -> nn.Module:
    """Quantize ``model``'s weights in place and return it.

    ``mode``: "int8" (per-channel) or "int4" (``group_size`` columns per scale, default 64,
    asymmetric unless ``symmetric``), or settings from :func:`quantization_settings`.
    ``skip``: module-name patterns left in float; ``embeddings``: quantize the embeddings and the
    LM head too; ``matmul_dtype`` (int8): the dtype the matmuls compute in, "bfloat16" (the packed int8 kernel
    on CPU) or "float32" (exactly ``x @ dequantized.T``); None: the fastest correct one for the device and the
    activations (:func:`lmlab.quantization.int8.fastest_matmul_dtype`: bfloat16 on CPU). Accepts lmlab's GPT,
    ``HFCausalLM`` or a bare Hugging Face ``PreTrainedModel``.
    """
    if not isinstance(mode, QuantizationSettings):
        mode = quantization_settings(mode, group_size, skip, embeddings, symmetric, matmul_dtype)
    convert(model, mode, quantize_weights=True)
    return model


def convert(model: nn.Module, settings: QuantizationSettings, quantize_weights: bool) -> None:
    """Replace the selected layers; with ``quantize_weights=False`` their storage is left empty for a
    checkpoint to fill (no quantization work)."""
    root = root_module(model)
    if is_quantized(root):
        mode = getattr(settings_of(root), "mode", "int8/int4")
        raise InputError(f"the model is already quantized ({mode}); quantize the float model "
                         "(its .ckpt or run directory) instead")
    plan = _plan(root, settings, check_values=quantize_weights)
    matmul_dtype = getattr(torch, settings.matmul_dtype) if settings.matmul_dtype else None
    replaced: dict[int, QuantizedLinear] = {}  # id(float weight) -> its quantized Linear
    for name, module in plan:
        if not isinstance(module, nn.Embedding):
            weight, bias = _linear_weight(module)
            new = QuantizedLinear(*weight.shape, bias is not None, settings.mode, settings.group_size,
                                  settings.symmetric, matmul_dtype, weight.dtype, weight.device)
            if quantize_weights:
                new.set_weight(weight)
                if bias is not None:
                    new.bias.data.copy_(bias.detach())
            replaced[id(module.weight)] = new
            _set_module(root, name, new)
    for name, module in plan:
        if isinstance(module, nn.Embedding):
            head = replaced.get(id(module.weight))
            if head is not None:
                new = TiedEmbedding(head)
            else:
                new = QuantizedEmbedding(*module.weight.shape, settings.mode, settings.group_size,
                                         settings.symmetric, None, module.weight.dtype, module.weight.device)
                if quantize_weights:
                    new.set_weight(module.weight)
            _set_module(root, name, new)
    root.quantization = settings


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantizedWeight | TiedEmbedding) for m in root_module(model).modules())


def settings_of(model: nn.Module) -> QuantizationSettings | None:
    """The settings a model was quantized with (None for a float model)."""
    return getattr(root_module(model), "quantization", None)


def root_module(model: nn.Module) -> nn.Module:
    """The module whose names count: lmlab's GPT, or the Hugging Face model inside the adapter."""
    from lmlab.models.hf import HFCausalLM

    return model.hf if isinstance(model, HFCausalLM) else model


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


def _linear_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [out, in], bias) of an nn.Linear or of GPT-2's Conv1D (which stores [in, out])."""
    if isinstance(module, nn.Linear):
        return module.weight.detach(), module.bias
    return module.weight.detach().T, module.bias


def _output_head(root: nn.Module) -> nn.Module | None:
    if hasattr(root, "get_output_embeddings"):
        return root.get_output_embeddings()
    return getattr(root, "lm_head", None)


def _plan(root: nn.Module, settings: QuantizationSettings, check_values: bool) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer to replace, after checking that all of them can be."""
    conv1d = _conv1d_type()
    linear_types = (nn.Linear,) if conv1d is None else (nn.Linear, conv1d)
    head = _output_head(root)
    modules = dict(root.named_modules())
    candidates = [(name, m) for name, m in modules.items()
                  if type(m) in linear_types or (settings.embeddings and type(m) is nn.Embedding)]
    for pattern in settings.skip:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in modules if name):
            examples = ", ".join(name for name, _ in candidates[:3])
            raise ArgumentError("skip", list(settings.skip), f"the pattern {pattern!r} matches no module of the model "
                                f"(names look like {examples})")
    plan = [(name, m) for name, m in candidates
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in settings.skip)
            and (settings.embeddings or m is not head)]
    if not plan:
        raise ArgumentError("skip", list(settings.skip), "leaves nothing to quantize: no Linear layer is left")
    chosen = {name for name, _ in plan}
    sharing: dict[int, list[str]] = {}
    for name, module in candidates:
        sharing.setdefault(id(module.weight), []).append(name)
    for group in sharing.values():
        if 0 < len(chosen.intersection(group)) < len(group):
            raise ArgumentError("skip", list(settings.skip), f"{' and '.join(group)} share one weight (tied "
                                "embeddings): skip both or neither")
    weights = {name: module.weight if isinstance(module, nn.Embedding) else _linear_weight(module)[0]
               for name, module in plan}
    if settings.mode == "int4":
        _check_group_size(settings, {name: w.shape[1] for name, w in weights.items()})
    if check_values:
        for name, weight in weights.items():
            if not bool(torch.isfinite(weight).all()):
                raise InputError(f"{name}.weight has non-finite values (inf or NaN); it cannot be quantized")
    return plan


def _check_group_size(settings: QuantizationSettings, in_features: dict[str, int]) -> None:
    for name, size in in_features.items():
        if size % 2:
            raise InputError(f"{name} has an odd input size ({size}); int4 packs two weights per byte")
        if size % settings.group_size:
            common = math.gcd(*in_features.values())
            fits = [str(d) for d in (16, 32, 64, 128, 256) if common % d == 0] or [str(common)]
            raise ArgumentError("group_size", settings.group_size, f"does not divide in_features={size} of {name}; "
                                f"allowed: a divisor of every quantized layer's input size, e.g. {', '.join(fits)}")


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)
