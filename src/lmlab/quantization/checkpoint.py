"""Quantized checkpoints: one ``.safetensors`` file that rebuilds the model without unpickling anything.

The tensors are the model's state dict (int8/uint8 weights, scales, float norms and biases; a
tensor shared by tied layers is stored once and its other names listed under ``aliases``). The
header metadata (strings only) carries the format version, the model spec and tokenizer of
:mod:`lmlab.spec` and the quantization settings. Loading first builds the model the header describes on
the meta device and checks it against the shapes the header lists for the stored tensors (no tensor read),
so a file whose metadata claims a larger model is refused in milliseconds; then it builds the float model,
swaps in empty quantized layers with the same settings and fills every tensor from the file, so a
save/load round trip is bit-exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from lmlab.atomic import atomic_write
from lmlab.errors import CheckpointError, InputError, first_line
from lmlab.models.hf import as_causal_lm
from lmlab.quantization.convert import QuantizationSettings, convert, settings_of
from lmlab.spec import (
    build_model,
    build_tokenizer,
    model_bytes,
    model_on_meta,
    model_spec,
    tokenizer_spec,
    weights_mismatch,
)

FORMAT = "lmlab-quantized"
FORMAT_VERSION = "1"
SAFETENSORS = ".safetensors"  # the suffix that makes a checkpoint a quantized one
REBUILT_FROM = (KeyError, TypeError, ValueError, RuntimeError)  # a header whose model cannot be rebuilt


def save_quantized(model: nn.Module, path: str | Path, tokenizer=None) -> Path:
    """Write a quantized model (and its tokenizer, if given) to ``path`` (a .safetensors file)."""
    path = Path(path)
    model = as_causal_lm(model)
    settings = settings_of(model)
    if settings is None:
        raise InputError("save_quantized takes a model returned by lmlab.quantization.quantize")
    tensors, aliases = {}, {}
    first_name: dict[tuple, str] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if key in first_name:
            aliases[name] = first_name[key]
        else:
            first_name[key] = name
            tensors[name] = tensor.detach().contiguous().cpu()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": json.dumps(model_spec(model)),
        "quantization": json.dumps(settings.to_dict()),
        "aliases": json.dumps(aliases),
    }
    if tokenizer is not None:
        metadata["tokenizer"] = json.dumps(tokenizer_spec(tokenizer))
    atomic_write(path, lambda f: f.write(save(tensors, metadata=metadata)))  # a reader never sees half a file
    return path


def read_quantized_header(path: str | Path, field: str = "ckpt") -> dict:
    """The header metadata of a quantized checkpoint (strings only), after checking the file is one."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(field, path, "does not exist (give a .safetensors file written by `lmlab quantize`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(field, path, f"is not a readable safetensors file: {e}") from e
    except RuntimeError as e:  # the reader memory-maps the whole file: an address-space limit (ulimit -v)
        raise CheckpointError(field, path, f"could not be memory-mapped ({path.stat().st_size / 1e9:.1f} GB): "
                              f"{first_line(e)}") from None
    if raw.get("format") != FORMAT:
        raise CheckpointError(field, path, "is a safetensors file but not an lmlab quantized checkpoint "
                              f"(metadata format={raw.get('format')!r}, expected {FORMAT!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(field, path, f"has format_version={raw.get('format_version')!r}; this lmlab "
                              f"reads version {FORMAT_VERSION}")
    return raw


def stored_shapes(path: str | Path) -> dict[str, list[int]]:
    """Name -> shape of every tensor a safetensors file stores, from its header (no tensor is read; the
    safetensors reader has checked each shape against its byte range and the file's size)."""
    with safe_open(str(Path(path).expanduser()), framework="pt") as f:
        return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}


def describe_quantized(path: str | Path, field: str = "ckpt") -> tuple[nn.Module, int, int, dict]:
    """(the model the file describes, on the meta device with its quantized layers; the bytes loading it
    allocates and the parameters of the float model it builds first; the header with its JSON decoded), after
    checking the header's model against the tensors the file stores: a mismatch names the tensor and both
    shapes."""
    raw = read_quantized_header(path, field)
    path = Path(path).expanduser()
    stored = stored_shapes(path)
    try:
        meta = {key: json.loads(raw[key]) for key in ("model", "quantization", "aliases")}
        if "tokenizer" in raw:
            meta["tokenizer"] = json.loads(raw["tokenizer"])
        stored |= {alias: stored[name] for alias, name in meta["aliases"].items() if name in stored}
        model = model_on_meta(meta["model"], len(stored))
        built, n_params = model_bytes(model), sum(p.numel() for p in model.parameters())
        convert(model, QuantizationSettings.from_dict(meta["quantization"]), quantize_weights=False)
    except REBUILT_FROM as e:
        raise CheckpointError(field, path, f"does not describe a model this lmlab can rebuild: {e}") from None
    mismatch = weights_mismatch(model, stored)
    if mismatch:
        raise CheckpointError(field, path, f"its header describes a model that its tensors do not hold: {mismatch}; "
                              "refused before building it")
    return model, built, n_params, {**raw, **meta}


def load_quantized(path: str | Path, field: str = "ckpt"):
    """(model in eval mode on CPU, tokenizer or None, header metadata with its JSON decoded)."""
    *_, meta = describe_quantized(path, field)
    path = Path(path).expanduser()
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(field, path, f"is not a readable safetensors file: {e}") from e
    try:
        model = build_model(meta["model"])
        convert(model, QuantizationSettings.from_dict(meta["quantization"]), quantize_weights=False)
        for alias, name in meta["aliases"].items():
            tensors[alias] = tensors[name]
        model.load_state_dict(tensors, strict=True)
    except REBUILT_FROM as e:
        raise CheckpointError(field, path, f"does not describe a model this lmlab can rebuild: {e}") from e
    tokenizer = build_tokenizer(meta["tokenizer"]) if "tokenizer" in meta else None
    return model.eval(), tokenizer, meta
