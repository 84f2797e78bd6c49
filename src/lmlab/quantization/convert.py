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
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from lmlab.errors import InputError
from lmlab.quantization.layers import QuantizedEmbedding, QuantizedLinear, QuantizedWeight, TiedEmbedding

MODES = ("int8", "int4")
DEFAULT_GROUP_SIZE = 64
FIELD_NAMES = {"mode": "mode", "group_size": "group_size", "skip": "skip", "matmul_dtype": "matmul_dtype"}
MATMUL_DTYPES = ("bfloat16",)


@dataclass(frozen=True)
class QuantizationSettings:
    """What ``quantize`` did; stored with a quantized model and in its checkpoint."""

    mode: str
    group_size: int | None = None  # int4: input columns per scale
    symmetric: bool = False  # int4: no offsets (int8 is always symmetric)
    embeddings: bool = False  # also the embeddings and the LM head
    skip: tuple[str, ...] = ()  # fnmatch patterns of module names left in float
    matmul_dtype: str | None = None  # int8: "bfloat16" computes matmuls in bf16 (None: the input's dtype)
    # how the caller's interface names each field, for error messages (not part of the settings)
    names: dict = field(default_factory=lambda: dict(FIELD_NAMES), compare=False, repr=False)

    def to_dict(self) -> dict:
        settings = asdict(self)
        settings.pop("names")
        settings["skip"] = list(self.skip)
        return settings

    @classmethod
    def from_dict(cls, settings: dict) -> QuantizationSettings:
        return cls(**{**settings, "skip": tuple(settings.get("skip", ()))})


def quantization_settings(mode: str, group_size: int | None = None, skip=(), embeddings: bool = False,
                          symmetric: bool = False, matmul_dtype: str | None = None,
                          names: dict | None = None) -> QuantizationSettings:
    """Checked settings (no model needed, so command lines check them before loading anything).

    ``names`` maps "mode", "group_size", "skip" and "matmul_dtype" to the caller's field names, e.g.
    {"mode": "quantize"} for generate.py."""
    names = {**FIELD_NAMES, **(names or {})}
    if mode not in MODES:
        raise InputError(f"{names['mode']}={mode!r} is not a quantization mode; allowed: {', '.join(MODES)}")
    if mode == "int8" and group_size is not None:
        raise InputError(f"{names['group_size']}={group_size} applies to int4 only "
                         "(int8 has one scale per output channel); leave it unset for int8")
    if mode == "int4":
        group_size = DEFAULT_GROUP_SIZE if group_size is None else group_size
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise InputError(f"{names['group_size']}={group_size!r} must be a positive integer (e.g. 32, 64, 128)")
    if matmul_dtype is not None and (mode != "int8" or matmul_dtype not in MATMUL_DTYPES):
        raise InputError(f"{names['matmul_dtype']}={matmul_dtype!r}; allowed: unset, or "
                         f"{', '.join(MATMUL_DTYPES)} with int8 (mode is {mode})")
    skip = (skip,) if isinstance(skip, str) else tuple(skip or ())
    if not all(isinstance(pattern, str) and pattern for pattern in skip):
        raise InputError(f"{names['skip']}={list(skip)!r} must be module-name patterns (e.g. 'blocks.0.*')")
    return QuantizationSettings(mode, group_size, bool(symmetric) and mode == "int4", bool(embeddings), skip,
                                matmul_dtype, names)


def quantize(model: nn.Module, mode: str | QuantizationSettings, group_size: int | None = None, skip=(),
             embeddings: bool = False, symmetric: bool = False, matmul_dtype: str | None = None) -> nn.Module:
    """Quantize ``model``'s weights in place and return it.

    ``mode``: "int8" (per-channel) or "int4" (``group_size`` columns per scale, default 64,
    asymmetric unless ``symmetric``), or settings from :func:`quantization_settings`.
    ``skip``: module-name patterns left in float; ``embeddings``: quantize the embeddings and the
    LM head too; ``matmul_dtype="bfloat16"`` (int8): compute the matmuls in bfloat16, which lets a
    float32 model use the faster packed int8 kernel on CPU. Accepts lmlab's GPT, ``HFCausalLM`` or a
    bare Hugging Face ``PreTrainedModel``.
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
    names = settings.names
    conv1d = _conv1d_type()
    linear_types = (nn.Linear,) if conv1d is None else (nn.Linear, conv1d)
    head = _output_head(root)
    modules = dict(root.named_modules())
    candidates = [(name, m) for name, m in modules.items()
                  if type(m) in linear_types or (settings.embeddings and type(m) is nn.Embedding)]
    for pattern in settings.skip:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in modules if name):
            examples = ", ".join(name for name, _ in candidates[:3])
            raise InputError(f"{names['skip']} pattern {pattern!r} matches no module of the model "
                             f"(names look like {examples})")
    plan = [(name, m) for name, m in candidates
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in settings.skip)
            and (settings.embeddings or m is not head)]
    if not plan:
        raise InputError(f"nothing to quantize: no Linear layer is left after {names['skip']}={list(settings.skip)}")
    chosen = {name for name, _ in plan}
    sharing: dict[int, list[str]] = {}
    for name, module in candidates:
        sharing.setdefault(id(module.weight), []).append(name)
    for group in sharing.values():
        if 0 < len(chosen.intersection(group)) < len(group):
            raise InputError(f"{' and '.join(group)} share one weight (tied embeddings): "
                             f"skip both or neither in {names['skip']}")
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
    group_field = settings.names["group_size"]
    for name, size in in_features.items():
        if size % 2:
            raise InputError(f"{name} has an odd input size ({size}); int4 packs two weights per byte")
        if size % settings.group_size:
            common = math.gcd(*in_features.values())
            fits = [str(d) for d in (16, 32, 64, 128, 256) if common % d == 0] or [str(common)]
            raise InputError(f"{group_field}={settings.group_size} does not divide in_features={size} of {name}; "
                             f"allowed: a divisor of every quantized layer's input size, e.g. {', '.join(fits)}")


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)
