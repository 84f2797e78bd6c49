"""Read a Hugging Face folder of a Llama or GPT-2 model into lmlab's own GPT.

Only files are read (config.json, the safetensors or PyTorch weight files with ``weights_only=True``, the
tokenizer); no transformers model is built and no code from the folder runs. The result is lmlab's GPT in
float32, so its compiled static-cache decoding, quantization and speculative decoding apply.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from lmlab.errors import InputError
from lmlab.models.gpt import GPT
from lmlab.models.hf_architecture import LLAMA, NOT_ARCHITECTURE, UnmappableError, gpt_config
from lmlab.models.hf_weights import from_hf

log = logging.getLogger(__name__)
PREFIXES = {LLAMA: "model.", "gpt2": "transformer."}
# buffers some savers wrote that are recomputed, not learned (old Llama rotary tables, GPT-2 causal masks)
RECOMPUTED = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


def read_config(folder: str | Path) -> dict:
    """config.json of a Hugging Face folder; InputError naming the file when it is missing or not JSON."""
    path = Path(folder).expanduser() / "config.json"
    if not path.is_file():
        raise InputError(f"{path.parent}: not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: holds a {type(config).__name__}, not a config object")
    return config


def pretrained_architecture(folder: str | Path) -> dict:
    """lmlab GPT keyword arguments that compute the folder's model; UnmappableError naming the file and field."""
    config, path = read_config(folder), Path(folder).expanduser() / "config.json"
    try:
        return gpt_config(config)
    except UnmappableError as e:
        raise UnmappableError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: a field is missing or malformed ({type(e).__name__}: {e})") from None


def architecture_differences(given: dict, pretrained: dict) -> dict:
    """{field: (given, pretrained)} for the architecture fields where a caller's arguments and the folder disagree."""
    return {k: (given[k], v) for k, v in pretrained.items()
            if k in given and k not in NOT_ARCHITECTURE and given[k] != v
            and not (k == "n_kv_head" and given[k] is None and v == pretrained["n_head"])}


def with_pretrained_architecture(folder: str | Path, given: dict) -> dict:
    """GPT's arguments with the folder's architecture over the given ones (the differences logged in one line);
    the fields weights do not fix (dropout) stay the caller's."""
    pretrained = pretrained_architecture(folder)
    differences = architecture_differences(given, pretrained)
    if differences:
        listed = ", ".join(f"{k}={theirs!r} (not {ours!r})" for k, (ours, theirs) in differences.items())
        log.warning("init_from=%s: its config.json sets %s", folder, listed)
    kept = {k: given[k] for k in NOT_ARCHITECTURE if k in given}
    return {**given, **pretrained, **kept}


def read_tensors(folder: str | Path, meta: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's weight files: model.safetensors, sharded safetensors (an index), or
    pytorch_model.bin read with ``weights_only=True``. ``meta``: tensors on the meta device with the stored
    shapes, read from the files' headers (safetensors) or memory-mapped (.bin): no weight is read."""
    folder = Path(folder).expanduser()
    for index_name, reader in (("model.safetensors.index.json", _read_safetensors),
                               ("pytorch_model.bin.index.json", _read_bin)):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in reader(folder / shard, meta).items()}
    for name, reader in (("model.safetensors", _read_safetensors), ("pytorch_model.bin", _read_bin)):
        if (folder / name).is_file():
            return reader(folder / name, meta)
    raise InputError(f"{folder}: no model.safetensors or pytorch_model.bin (nor a sharded index of them)")


def _read_safetensors(path: Path, meta: bool) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        if not meta:
            return load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}
            return {name: torch.empty(s.get_shape(), device="meta") for name, s in slices.items()}
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None


def _read_bin(path: Path, meta: bool) -> dict[str, torch.Tensor]:
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=meta)
    except Exception as e:  # unpickling refusals, truncated zips: many types
        raise InputError(f"{path}: not readable with torch.load(weights_only=True) ({type(e).__name__})") from None
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in tensors.items()} if meta else tensors


def lmlab_state(tensors: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """lmlab's state dict for a GPT of ``config`` from a folder's tensors (KeyError naming a tensor it lacks)."""
    family = LLAMA if config.position == "rope" else "gpt2"
    prefix = PREFIXES[family]
    named = {}
    for name, tensor in tensors.items():
        if name.endswith(RECOMPUTED):
            continue
        # a base model (LlamaModel, GPT2Model) saves its weights without the causal LM's prefix
        named[name if name.startswith(prefix) or name == "lm_head.weight" else prefix + name] = tensor
    return from_hf(named, config, family)


def load_pretrained_weights(model: GPT, folder: str | Path) -> None:
    """Fill ``model`` (built with the folder's architecture) with the folder's weights."""
    folder = Path(folder).expanduser()
    try:
        model.load_state_dict(lmlab_state(read_tensors(folder), model.config), strict=True)
    except (KeyError, RuntimeError) as e:
        detail = str(e).strip().splitlines()[0]
        raise InputError(f"{folder}: its weights do not fit the model its config.json describes ({detail})") from None


def import_hf(folder: str | Path):
    """(lmlab GPT in eval mode, the folder's tokenizer or None, {"hf_config": config.json}) from a Hugging Face
    folder of a Llama or GPT-2 model."""
    model = GPT(**pretrained_architecture(folder))
    load_pretrained_weights(model, folder)
    return model.eval(), read_tokenizer(folder), {"hf_config": read_config(folder)}


def read_tokenizer(folder: str | Path):
    """The folder's tokenizer (a fast one: lmlab stores tokenizers as tokenizer.json), or None when it has none."""
    folder = Path(folder).expanduser()
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise InputError(f"{folder}: its tokenizer is not a fast (tokenizers) tokenizer; lmlab needs tokenizer.json")
    return tokenizer
