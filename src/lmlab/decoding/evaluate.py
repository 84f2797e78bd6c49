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

from lmlab.decoding.beam import beam_search
from lmlab.decoding.metrics import decode_metrics, output_perplexity
from lmlab.decoding.sampling import greedy, sample
from lmlab.decoding.speculative import PROMPT_LOOKUP, SPECULATIVE_COUNTS, speculative, speculative_rates
from lmlab.devices import synchronize
from lmlab.errors import ArgumentError


@dataclass
class DecodeResult:
    name: str
    prompts: list[list[int]]
    completions: list[list[int]]  # new tokens of each prompt, up to and including EOS
    metrics: dict[str, float] = field(default_factory=dict)


def draft_path(decode) -> str | None:
    """The checkpoint a strategy's ``draft`` names (speculative decoding), None for prompt lookup or no draft."""
    draft = getattr(decode, "keywords", {}).get("draft")
    return draft if isinstance(draft, str) and draft != PROMPT_LOOKUP else None


def load_draft(decode: functools.partial) -> functools.partial:
    """A strategy that takes a ``draft`` (speculative) given as a checkpoint path gets that model loaded (once)."""
    path = draft_path(decode)
    if path is None:
        return decode
    from lmlab.checkpoint import load_checkpoint

    model, _, _ = load_checkpoint(path, field="draft")
    return functools.partial(decode.func, *decode.args, **{**decode.keywords, "draft": model})


def strategies_by_name(strategies, name: str) -> dict[str, functools.partial]:
    """One decoding partial (called ``name``) or a mapping name -> partial; drafts stay checkpoint paths."""
    named = {name: strategies} if isinstance(strategies, functools.partial) else dict(strategies)
    for decode in named.values():
        if "draft" in inspect.signature(decode.func).parameters and "draft" not in decode.keywords:
            raise ArgumentError("draft", None, "is required: a draft run directory or .ckpt, or prompt_lookup")
    return named


def named_strategies(strategies, name: str) -> dict[str, functools.partial]:
    """One decoding partial (called ``name``) or a mapping name -> partial, drafts loaded."""
    return {key: load_draft(decode) for key, decode in strategies_by_name(strategies, name).items()}


def sequences_at_once(decode, prompts: int) -> tuple[int, int]:
    """(prompts decoded together, sequences per prompt) of a strategy over ``prompts`` prompts: what its KV
    cache holds at once (beam search: every prompt's beams; speculative decoding: one prompt at a time)."""
    func = getattr(decode, "func", decode)
    if ADAPTERS.get(func) is _one_prompt_at_a_time:
        return 1, 1
    if func is beam_search:
        return prompts, decode.keywords.get("num_beams", inspect.signature(func).parameters["num_beams"].default)
    return prompts, 1


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask, prompts aligned to the right as decoding expects."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    return ids.to(device), mask.to(device)


@dataclass
class Decoded:
    """What every strategy's adapter returns: one row per prompt and the strategy's own figures."""

    sequences: torch.Tensor  # [prompts, width + new]: the left-padded prompts, then the new tokens
    stats: dict[str, float] = field(default_factory=dict)


def _batched(decode, model, input_ids, mask, prompts, max_new_tokens, eos_token_id, pad_token_id, extra):
    """greedy and sample: the left-padded batch in one call."""
    sequences = decode(model, input_ids=input_ids, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                       attention_mask=mask, pad_token_id=pad_token_id, **extra)
    return Decoded(sequences)


def _best_beam(decode, model, input_ids, mask, prompts, max_new_tokens, eos_token_id, pad_token_id, extra):
    """beam_search: (sequences, scores) with num_return_sequences rows per prompt, best first."""
    sequences, _ = decode(model, input_ids=input_ids, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                          attention_mask=mask, pad_token_id=pad_token_id, **extra)
    return Decoded(sequences[:: len(sequences) // len(prompts)])


def _one_prompt_at_a_time(decode, model, input_ids, mask, prompts, max_new_tokens, eos_token_id, pad_token_id,
                          extra):
    """speculative: batch size 1, so each prompt alone, reassembled into the padded layout; the counts
    are summed over prompts and the rates computed from the sums."""
    width, device = input_ids.shape[1], input_ids.device
    sequences = torch.full((len(prompts), width + max_new_tokens), pad_token_id, device=device)
    sequences[:, :width] = input_ids
    counts = dict.fromkeys(SPECULATIVE_COUNTS, 0)
    for row, prompt in enumerate(prompts):
        out, stats = decode(model, input_ids=torch.tensor([prompt], device=device), max_new_tokens=max_new_tokens,
                            eos_token_id=eos_token_id, **extra)
        new = out[0, len(prompt):]
        sequences[row, width:width + len(new)] = new
        for key in counts:
            counts[key] += stats[key]
    rates = speculative_rates(counts)
    return Decoded(sequences, {key: rates[key] for key in SPECULATIVE_FIGURES})


# how each strategy is called and what it returns; a strategy not listed is called like greedy
ADAPTERS = {greedy: _batched, sample: _batched, beam_search: _best_beam, speculative: _one_prompt_at_a_time}
SPECULATIVE_FIGURES = ("acceptance_rate", "mean_accepted", "tokens_per_target_forward")


def compiles(decode) -> bool:
    """Whether a strategy (a partial of greedy/sample/...) runs the compiled decode step: its first call compiles."""
    return bool(getattr(decode, "keywords", {}).get("compile"))


@torch.inference_mode()
def evaluate_strategy(name: str, decode, model, prompts: list[list[int]], max_new_tokens: int,
                      eos_token_id: int | None, pad_token_id: int, seed: int = 0,
                      warmup: bool = False) -> DecodeResult:
    """Decode every prompt with ``decode`` (a partial of greedy/sample/beam_search/speculative).

    metrics: tokens_per_s, mean_new_length, distinct_2, repetition_rate, perplexity, and for speculative
    decoding acceptance_rate, mean_accepted and tokens_per_target_forward (the names ``speculative``
    returns). ``warmup``: decode once untimed first, so tokens_per_s leaves out one-time costs (the
    compilation of a ``compile=True`` strategy)."""
    device = next(model.parameters()).device
    func = getattr(decode, "func", decode)
    draft = getattr(decode, "keywords", {}).get("draft")
    if isinstance(draft, torch.nn.Module):  # a draft model decodes beside the target, on its device
        draft.to(device).eval()
    seeded = "generator" in inspect.signature(func).parameters  # seeded sampling: same texts every evaluation
    input_ids, mask = left_pad(prompts, pad_token_id, device)
    width = input_ids.shape[1]
    adapter = ADAPTERS.get(func, _batched)

    def run() -> Decoded:
        extra = {"generator": torch.Generator(device).manual_seed(seed)} if seeded else {}
        return adapter(decode, model, input_ids, mask, prompts, max_new_tokens, eos_token_id, pad_token_id, extra)

    if warmup:
        run()
        synchronize(device)
    start = time.perf_counter()
    decoded = run()
    synchronize(device)
    elapsed = time.perf_counter() - start

    sequences = decoded.sequences
    metrics = decode_metrics(sequences, width, eos_token_id)
    metrics["tokens_per_s"] = metrics["mean_new_length"] * len(prompts) / elapsed
    metrics["perplexity"] = output_perplexity(model, sequences, width, mask, eos_token_id)
    metrics |= decoded.stats
    completions = []
    for row in sequences[:, width:].tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id) + 1]
        completions.append(row)
    return DecodeResult(name, prompts, completions, metrics)
