"""How a quantized model compares with its float original: memory, perplexity, greedy agreement, speed.

Shared by ``lmlab quantize`` (its before/after table) and benchmarks/quantize.py. Speeds are taken
side by side: every repeat times every model once, and each model keeps its fastest repeat, so
load from other processes hits all of them alike. On a CPU shared with other work even that is
noise; ``clock=time.process_time`` with one torch thread counts the CPU time decoding takes instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.decoding import greedy
from lmlab.devices import synchronize
from lmlab.models.hf import as_causal_lm
from lmlab.quantization.layers import QuantizedWeight


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers, a tensor shared by several layers counted once."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def quantized_layer_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of the quantized weights with their scales and offsets, number of weights they encode)."""
    layers = [m for m in model.modules() if isinstance(m, QuantizedWeight)]
    return sum(m.nbytes() for m in layers), sum(m.out_features * m.in_features for m in layers)


@torch.inference_mode()
def perplexity(model: nn.Module, batches: Iterable[torch.Tensor]) -> float:
    """exp(mean next-token cross-entropy) over blocks [B, T + 1] (inputs x[:, :-1], targets x[:, 1:])."""
    model = as_causal_lm(model)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        logits = model(batch[:, :-1]).logits.float()
        total += F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
        count += batch[:, 1:].numel()
    return math.exp(total / count)


def greedy_completions(model: nn.Module, prompts: torch.Tensor, new_tokens: int, batch_size: int = 64
                       ) -> torch.Tensor:
    """[N, new_tokens] greedy continuations of equal-length prompts [N, L] (no early stop)."""
    device = next(model.parameters()).device
    parts = [greedy(model, chunk.to(device), new_tokens)[:, prompts.shape[1]:].cpu()
             for chunk in prompts.split(batch_size)]
    return torch.cat(parts)


def token_agreement(reference: list[list[int]], other: list[list[int]]) -> float:
    """Fraction of positions where two completions of the same prompts hold the same token (positions
    only one of them reaches, because the other stopped earlier, count as different)."""
    same = total = 0
    for a, b in zip(reference, other, strict=True):
        same += sum(x == y for x, y in zip(a, b, strict=False))
        total += max(len(a), len(b))
    return same / max(total, 1)


def decode_tokens_per_s(models: dict[str, nn.Module], prompts: torch.Tensor, batch_sizes=(1, 8),
                        new_tokens: int = 32, repeats: int = 3, clock=time.perf_counter, compile: bool = False
                        ) -> dict[str, dict[int, float]]:
    """Greedy decode speed (new tokens per second of ``clock``, prefill included) of each model at each
    batch size; ``compile``: with the compiled decode step (compiled in the untimed first round)."""
    rows = max(batch_sizes)
    prompts = prompts.repeat(math.ceil(rows / len(prompts)), 1)[:rows]
    best = {name: {b: math.inf for b in batch_sizes} for name in models}
    for repeat in range(repeats + 1):  # round 0 warms up
        for b in batch_sizes:
            for name, model in models.items():
                ids = prompts[:b].to(next(model.parameters()).device)
                start = clock()
                greedy(model, ids, new_tokens, compile=compile)
                synchronize(ids.device)
                if repeat:
                    best[name][b] = min(best[name][b], clock() - start)
    return {name: {b: b * new_tokens / seconds for b, seconds in times.items()} for name, times in best.items()}


def compare_models(models: dict[str, nn.Module], reference: str, val_batches: list[torch.Tensor] | None,
                   prompts: torch.Tensor, new_tokens: int = 32, batch_sizes=(1, 8), repeats: int = 3,
                   clock=time.perf_counter, compile: bool = False) -> dict:
    """Every figure of every model, keyed by model name; agreement is with the ``reference`` model.

    ``val_batches`` None skips perplexity; ``prompts`` [N, L] drive both agreement and speed."""
    speed = decode_tokens_per_s(models, prompts, batch_sizes, new_tokens, repeats, clock, compile)
    completions = {name: greedy_completions(model, prompts, new_tokens) for name, model in models.items()}
    figures = {}
    for name, model in models.items():
        quantized, count = quantized_layer_bytes(model)
        same = completions[name] == completions[reference]
        figures[name] = {
            "weight_bytes": weight_bytes(model),
            "quantized_layer_bytes": quantized,
            "quantized_weights": count,
            "perplexity": perplexity(model, val_batches) if val_batches is not None else None,
            "greedy_agreement": token_agreement(completions[reference].tolist(), completions[name].tolist()),
            "identical_prompts": same.all(-1).float().mean().item(),
            **{f"tokens_per_s_batch{b}": value for b, value in speed[name].items()},
        }
    return figures
