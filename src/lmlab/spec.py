"""What a checkpoint says about its model and tokenizer, so that it rebuilds them alone: plain data only.

A model spec is ``{"kind": "gpt" | "hf", "config": <the constructor's fields>}``; a tokenizer spec is its
JSON and special tokens. Lightning checkpoints (:mod:`lmlab.checkpoint`) and quantized safetensors files
(:mod:`lmlab.quantization.checkpoint`) both carry them.
"""

from __future__ import annotations

import hashlib
import json

import torch.nn as nn


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
    """A tokenizer spec's hash (vocabulary, merges, pre-tokenizer, special tokens): equal exactly when the
    tokenizers give the same ids."""
    text = json.dumps([spec["json"], spec.get("special_tokens")], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
