"""What a checkpoint says about its model and tokenizer, so that it rebuilds them alone: plain data only.

A model spec is ``{"kind": "gpt" | "hf", "config": <the constructor's fields>}``; a tokenizer spec is its
JSON and special tokens. Lightning checkpoints (:mod:`lmlab.checkpoint`) and quantized safetensors files
(:mod:`lmlab.quantization.checkpoint`) both carry them. A spec is a claim a shared file makes: the model it
describes is built on the meta device first and its tensors compared with those the file stores
(:func:`weights_mismatch`), so a lying header costs no memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

# config fields that count a model's layers: each layer stores at least one tensor of its own
LAYER_FIELDS = ("n_layer", "num_hidden_layers", "num_layers", "n_layers")


def model_spec(model: nn.Module) -> dict:
    from lmlab.models.hf import HFCausalLM

    if isinstance(model, HFCausalLM):
        return {"kind": "hf", "config": model.to_config_dict()}
    return {"kind": "gpt", "config": model.to_config_dict()}


def build_model(spec: dict) -> nn.Module:
    if spec["kind"] == "hf":
        from transformers import AutoConfig, AutoModelForCausalLM

        from lmlab.models.hf import HFCausalLM

        config = dict(spec["config"])
        config.pop("auto_map", None)  # code a checkpoint names is never imported
        hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
        return HFCausalLM(AutoModelForCausalLM.from_config(hf_config, trust_remote_code=False))
    from lmlab.models.gpt import GPT

    return GPT(**spec["config"])


def tokenizer_spec(tokenizer) -> dict:
    return {
        "json": tokenizer.backend_tokenizer.to_str(),
        "special_tokens": {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)},
    }


def build_tokenizer(spec: dict):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(spec["json"]), **spec["special_tokens"])


def tokenizer_fingerprint(spec: dict) -> str:
    """A tokenizer spec's hash of what maps text to ids (vocabulary, merges, pre-tokenizer, normalizer, added
    tokens, the post-processor that adds special tokens; formatting and padding settings aside): equal exactly
    when the tokenizers give the same ids."""
    parts = json.loads(spec["json"])
    text = json.dumps([parts.get(part) for part in ("model", "pre_tokenizer", "normalizer", "added_tokens",
                                                    "post_processor")], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def same_tokenizer(spec: dict, other: dict) -> bool:
    """Whether two tokenizer specs map text to the same ids."""
    return tokenizer_fingerprint(spec) == tokenizer_fingerprint(other)


def model_on_meta(spec: dict, stored_tensors: int) -> nn.Module:
    """The model a spec describes, on the meta device (shapes, no memory). A spec claiming more layers than the
    file stores tensors is refused first (ValueError): building a million empty layers would take minutes."""
    counts = [spec["config"].get(name) for name in LAYER_FIELDS]
    layers = max((n for n in counts if isinstance(n, int)), default=0)
    if layers > stored_tensors:
        raise ValueError(f"its header claims {layers} layers, but the file stores only {stored_tensors} tensors")
    with torch.device("meta"):
        return build_model(spec)


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (on any device, meta included)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def weights_mismatch(model: nn.Module, stored: Mapping[str, Sequence[int]]) -> str | None:
    """The first difference between the tensors of a described model's state dict (on any device, meta included)
    and those a file stores (name -> shape), with both shapes; None when every name and shape agrees."""
    needed = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    for name, shape in needed.items():
        if name not in stored:
            return f"the described model needs a tensor {name} {list(shape)} that the file does not store"
        if list(stored[name]) != list(shape):
            return f"tensor {name} is {list(stored[name])} in the file, but the described model needs {list(shape)}"
    extra = sorted(set(stored) - set(needed))
    if extra:
        return f"the file stores a tensor {extra[0]} {list(stored[extra[0]])} that the described model does not have"
    return None
