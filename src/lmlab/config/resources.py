"""Refuse a run whose model would not fit in memory, before anything real is allocated.

The model is built on the ``meta`` device (shapes only, no memory), so its exact parameter count is known
for any target. Training then needs at least 16 bytes per parameter (fp32 weights, gradients and two
Adam moments) plus one batch of logits and their gradient (batch x block x vocabulary x 4 bytes x 2):
a lower bound, activations left out, so nothing that fits is refused.

Decoding (generate.py, the decoding callback) needs the weights as loading builds them, plus a KV cache of
sequences x layers x 2 (keys, values) x kv heads x head dim x (prompt + new tokens) x dtype size, where
sequences = prompts x beams, plus logits: the prefill's at every prompt position and each step's logits
and log-probabilities over all sequences. Also a lower bound: a number (beams, prompts) that cannot fit
is refused in one line naming it, before the first tensor is allocated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn as nn

from lmlab.errors import InputError

BYTES_PER_PARAM = 16  # fp32 weights, gradients and Adam's two moments
LOGIT_BYTES = 4 * 2  # fp32 logits and their gradient
# the config keys that set the decoding callback's numbers (library code names no key: it passes these)
CALLBACK_KEYS = {"batch": "callbacks.decoding.num_prompts", "beams": "decoding.num_beams",
                 "new_tokens": "callbacks.decoding.max_new_tokens"}


def training_memory(model: nn.Module, batch_size: int, block_size: int) -> tuple[int, int]:
    """(parameters, bytes) of the lower-bound estimate in the module docstring."""
    n_params = sum(p.numel() for p in model.parameters())
    vocab = vocab_size_of(model)
    return n_params, n_params * BYTES_PER_PARAM + batch_size * block_size * vocab * LOGIT_BYTES


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """(bytes, what) of the memory a run on ``device`` works in: one GPU's, or the host's free RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"{torch.cuda.get_device_name(device)}'s memory"
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024, "available memory (MemAvailable)"
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
        return (pages * os.sysconf("SC_PAGE_SIZE"), "available memory") if pages else None


def check_training_memory(model: nn.Module, batch_size: int, block_size: int, device: torch.device,
                          sharded_over: int = 1) -> None:
    """InputError when the lower-bound estimate exceeds the memory the run would train in.

    ``sharded_over``: devices that share parameters and optimizer state (FSDP), 1 otherwise."""
    n_params, needed = training_memory(model, batch_size, block_size)
    params_bytes = n_params * BYTES_PER_PARAM
    needed -= params_bytes - params_bytes // sharded_over
    available = available_memory(device)
    if available is None or needed <= available[0]:
        return
    logits = needed - params_bytes // sharded_over
    raise InputError(
        f"model: {n_params / 1e9:.2f}B parameters (model.*, data.vocab_size={vocab_size_of(model)}) do not fit: "
        f"training needs at least {needed / 1e9:.1f} GB ({BYTES_PER_PARAM} bytes per parameter for weights, "
        f"gradients and Adam state, plus {logits / 1e9:.1f} GB for one batch of logits, data.batch_size x "
        f"data.block_size x vocabulary x 8 bytes = {batch_size} x {block_size} x {vocab_size_of(model)} x 8), more "
        f"than the {available[0] / 1e9:.1f} GB of {available[1]}; use a smaller model, data.vocab_size or "
        "data.batch_size")


def check_model_memory(built_bytes: int, n_params: int, device: torch.device, key: str) -> None:
    """InputError when the model a checkpoint describes (``built_bytes`` as loading builds it) cannot fit."""
    available = available_memory(device)
    if available is not None and built_bytes > available[0]:
        raise InputError(f"{key}: its model ({n_params / 1e9:.2f}B parameters) needs {built_bytes / 1e9:.1f} GB as "
                         f"loading builds it, more than the {available[0] / 1e9:.1f} GB of {available[1]}")


def check_decoding_memory(models: Sequence[nn.Module], weights: int, batch: int, beams: int, prompt_tokens: int,
                          new_tokens: int, device: torch.device, keys: dict[str, str]) -> None:
    """InputError when decoding ``batch`` prompts x ``beams`` sequences with ``models`` (a target and maybe
    its draft; on any device, meta included) cannot fit next to ``weights`` bytes of model state (the weights; in
    training also gradients and optimizer state): the lower bound of the module docstring. ``keys``: the config
    keys of batch, beams and new_tokens as the caller's config names them."""
    available = available_memory(device)
    sequences, length = batch * beams, prompt_tokens + new_tokens
    per_token = sum(kv_bytes_per_token(m) for m in models)
    kv = sequences * length * per_token
    vocab = sum(vocab_size_of(m) for m in models)
    logits = 4 * vocab * (batch * prompt_tokens + 2 * sequences)
    needed = weights + kv + logits
    if available is None or needed <= available[0]:
        return
    lead = f"{keys['beams']}={beams}" if beams >= batch else f"{keys['batch']} ({batch} prompts)"
    prompts = f", the prompts ({keys['batch']})" if batch > 1 else ""
    raise InputError(
        f"{lead}: decoding needs at least {needed / 1e9:.1f} GB, more than the {available[0] / 1e9:.1f} GB of "
        f"{available[1]}: a KV cache of {kv / 1e9:.1f} GB ({batch} prompts x {beams} beams x {length} tokens "
        f"({prompt_tokens} prompt + {keys['new_tokens']}={new_tokens}) x {per_token} bytes per token), "
        f"{logits / 1e9:.1f} GB of logits (vocabulary {vocab}) and {weights / 1e9:.1f} GB of model state; lower "
        f"{keys['beams']}{prompts} or {keys['new_tokens']}")


def kv_bytes_per_token(model: nn.Module) -> int:
    """Bytes one sequence's KV cache holds per token: layers x 2 (keys and values) x kv heads x head dim x the
    dtype's size (lmlab's GPT and Hugging Face configs)."""
    config = model.config
    layers = _first(config, "n_layer", "num_hidden_layers")
    heads = _first(config, "n_head", "num_attention_heads")
    kv_heads = _first(config, "n_kv_head", "num_key_value_heads") or heads
    head_dim = getattr(config, "head_dim", None) or _first(config, "n_embd", "hidden_size") // heads
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return layers * 2 * kv_heads * head_dim * dtype.itemsize


def _first(config, *names: str) -> int:
    return next((int(v) for v in (getattr(config, n, None) for n in names) if v is not None), 0)


def vocab_size_of(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if vocab is None:
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        vocab = out.weight.shape[0] if out is not None else 0
    return int(vocab)
