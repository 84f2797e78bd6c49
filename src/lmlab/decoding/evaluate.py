"""Run a decoding strategy over a set of prompts and measure it.

Shared by the training callback and ``generate.py``: both hand in strategies as partials of the
decoding functions (what Hydra's ``_partial_: true`` builds) and get back texts' token ids and
the figures logged under ``decode/<strategy>/``.
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass, field

import torch

from lmlab.decoding.metrics import decode_metrics, output_perplexity
from lmlab.decoding.speculative import PROMPT_LOOKUP, speculative


@dataclass
class DecodeResult:
    name: str
    prompts: list[list[int]]
    completions: list[list[int]]  # new tokens of each prompt, up to and including EOS
    metrics: dict[str, float] = field(default_factory=dict)


def load_draft(decode: functools.partial) -> functools.partial:
    """A speculative strategy whose ``draft`` is a checkpoint path gets that model loaded (once)."""
    if decode.func is speculative and "draft" not in decode.keywords:
        raise ValueError("decoding.draft is missing: give a draft run directory or .ckpt, or prompt_lookup")
    draft = decode.keywords.get("draft")
    if not isinstance(draft, str) or draft == PROMPT_LOOKUP:
        return decode
    from lmlab.checkpoint import load_checkpoint

    model, _, _ = load_checkpoint(draft, field="decoding.draft")
    return functools.partial(decode.func, *decode.args, **{**decode.keywords, "draft": model})


def named_strategies(strategies, name: str) -> dict[str, functools.partial]:
    """One decoding partial (called ``name``) or a mapping name -> partial, drafts loaded."""
    named = {name: strategies} if isinstance(strategies, functools.partial) else dict(strategies)
    return {key: load_draft(decode) for key, decode in named.items()}


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask, prompts aligned to the right as decoding expects."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def evaluate_strategy(name: str, decode, model, prompts: list[list[int]], max_new_tokens: int,
                      eos_token_id: int | None, pad_token_id: int, seed: int = 0) -> DecodeResult:
    """Decode every prompt with ``decode`` (a partial of greedy/sample/beam_search/speculative)."""
    device = next(model.parameters()).device
    func = getattr(decode, "func", decode)
    draft = getattr(decode, "keywords", {}).get("draft")
    if isinstance(draft, torch.nn.Module):  # a draft model decodes beside the target, on its device
        draft.to(device).eval()
    extra = {}
    if "generator" in inspect.signature(func).parameters:  # seeded sampling: same texts every evaluation
        extra["generator"] = torch.Generator(device).manual_seed(seed)
    input_ids, mask = left_pad(prompts, pad_token_id, device)
    width = input_ids.shape[1]
    start = time.perf_counter()
    stats = {}
    if func is speculative:  # batch size 1: one prompt at a time, reassembled into the padded layout
        rows = []
        for p in prompts:
            seq, s = decode(model, input_ids=torch.tensor([p], device=device), max_new_tokens=max_new_tokens,
                            eos_token_id=eos_token_id, **extra)
            rows.append(seq[0, len(p):])
            for key in ("proposed", "accepted", "target_forwards"):
                stats[key] = stats.get(key, 0) + s[key]
        sequences = torch.full((len(prompts), width + max_new_tokens), pad_token_id, device=device)
        sequences[:, :width] = input_ids
        for row, new in enumerate(rows):
            sequences[row, width:width + len(new)] = new
    else:
        out = decode(model, input_ids=input_ids, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                     attention_mask=mask,
                     pad_token_id=pad_token_id, **extra)
        sequences = out[0] if isinstance(out, tuple) else out  # beam search: (sequences, scores)
        sequences = sequences[:: len(sequences) // len(prompts)]  # best of each prompt's returned beams
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start

    metrics = decode_metrics(sequences, width, eos_token_id)
    new_tokens = metrics["mean_new_length"] * len(prompts)
    metrics["tokens_per_s"] = new_tokens / elapsed
    metrics["perplexity"] = output_perplexity(model, sequences, width, mask, eos_token_id)
    if stats:
        metrics["acceptance_rate"] = stats["accepted"] / max(stats["proposed"], 1)
        metrics["mean_accepted_per_target_pass"] = stats["accepted"] / max(stats["target_forwards"], 1)
    completions = []
    for row in sequences[:, width:].tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id) + 1]
        completions.append(row)
    return DecodeResult(name, prompts, completions, metrics)
