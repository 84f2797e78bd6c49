"""Refuse a run whose model would not fit in memory, before anything real is allocated.

The model is built on the ``meta`` device (shapes only, no memory), so its exact parameter count is known
for any target. Training then needs at least 16 bytes per parameter (fp32 weights, gradients and two
Adam moments) plus one batch of logits and their gradient (batch x block x vocabulary x 4 bytes x 2):
a lower bound, activations left out, so nothing that fits is refused.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from lmlab.errors import InputError

BYTES_PER_PARAM = 16  # fp32 weights, gradients and Adam's two moments
LOGIT_BYTES = 4 * 2  # fp32 logits and their gradient


def training_memory(model: nn.Module, batch_size: int, block_size: int) -> tuple[int, int]:
    """(parameters, bytes) of the lower-bound estimate in the module docstring."""
    n_params = sum(p.numel() for p in model.parameters())
    vocab = vocab_size_of(model)
    return n_params, n_params * BYTES_PER_PARAM + batch_size * block_size * vocab * LOGIT_BYTES


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """(bytes, what) of the memory a run on ``device`` trains in: one GPU's, or the host's free RAM."""
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


def vocab_size_of(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if vocab is None:
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        vocab = out.weight.shape[0] if out is not None else 0
    return int(vocab)
