"""Greedy decoding and sampling: one token per row per step from a KV cache, as HF ``generate()``.

Finished rows (EOS emitted) continue with the pad token and the loop ends once every row has
finished; that check is the only host sync per step and runs only when an EOS id is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import annotated_types as at
import torch

from lmlab.arguments import NonNegative, NonNegativeInt, Positive, PositiveInt, Probability, checked
from lmlab.decoding.incremental import IncrementalLM
from lmlab.decoding.processors import repetition_penalty as penalise
from lmlab.decoding.processors import sample_from, warp_logits
from lmlab.decoding.prompts import check_prompt, eos_ids, pad_id
from lmlab.models.hf import as_causal_lm

TopP = Annotated[float, at.Gt(0), at.Le(1)]
Compile = bool | str  # True: inductor; a string: another torch.compile backend


@checked
@torch.no_grad()
def greedy(model, input_ids, max_new_tokens: PositiveInt, eos_token_id=None, attention_mask=None, pad_token_id=None,
           compile: Compile = False):
    """Most likely next token at each step -> LongTensor [B, prompt + new].

    ``compile=True``: the steps after the prefill run compiled on a static KV cache (same tokens)."""
    return _decode(model, input_ids, max_new_tokens, lambda logits, seen: logits.argmax(-1),
                   eos_token_id, attention_mask, pad_token_id, compile)


@checked
@torch.no_grad()
def sample(model, input_ids, max_new_tokens: PositiveInt, temperature: NonNegative = 1.0, top_k: NonNegativeInt = 0,
           top_p: TopP = 1.0, min_p: Probability = 0.0, repetition_penalty: Positive = 1.0, eos_token_id=None,
           attention_mask=None, generator=None, pad_token_id=None, compile: Compile = False):
    """Ancestral sampling from the processed distribution (temperature 0 = greedy).

    Deterministic for a seeded ``generator`` (on the model's device); ``compile`` as in :func:`greedy`."""
    def choose(logits, seen):
        logits = penalise(logits, seen, repetition_penalty)
        if temperature == 0:
            return logits.argmax(-1)
        return sample_from(warp_logits(logits, temperature, top_k, top_p, min_p).softmax(-1), generator)

    return _decode(model, input_ids, max_new_tokens, choose, eos_token_id, attention_mask, pad_token_id, compile)


def _decode(model, input_ids, max_new_tokens, choose: Callable, eos_token_id, attention_mask, pad_token_id,
            compile: bool):
    """The shared loop: ``choose(logits [B, V], tokens so far [B, L]) -> next token [B]``."""
    model = as_causal_lm(model)
    check_prompt(model, input_ids, max_new_tokens, attention_mask)
    batch, prompt_len = input_ids.shape
    eos = eos_ids(eos_token_id, input_ids.device)
    pad = pad_id(model, pad_token_id, eos)
    total = prompt_len + max_new_tokens
    tokens = input_ids.new_full((batch, total), pad, dtype=torch.long)
    tokens[:, :prompt_len] = input_ids
    with IncrementalLM(model, batch, total, attention_mask, compile) as lm:
        return _loop(lm, tokens, prompt_len, choose, eos, pad)


def _loop(lm: IncrementalLM, tokens: torch.Tensor, prompt_len: int, choose: Callable, eos, pad: int):
    unfinished = torch.ones(len(tokens), dtype=torch.bool, device=tokens.device)
    logits = lm.forward(tokens[:, :prompt_len])
    for cur in range(prompt_len, tokens.shape[1]):
        if cur > prompt_len:
            logits = lm.forward(tokens[:, cur - 1 : cur])
        nxt = choose(logits[:, -1].float(), tokens[:, :cur])
        if eos is None:
            tokens[:, cur] = nxt
            continue
        tokens[:, cur] = torch.where(unfinished, nxt, pad)
        unfinished &= ~torch.isin(tokens[:, cur], eos)
        if not unfinished.any():
            return tokens[:, : cur + 1]
    return tokens
