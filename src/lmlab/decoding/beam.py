"""Beam search with a KV cache, vectorised over batch and beams, with HF ``generate()`` semantics.

Each step scores all beams x vocab continuations, keeps the top K = max(2, 1 + #EOS) * num_beams
(so EOS candidates cannot starve the live beams), continues with the best num_beams that did not
finish and merges finished ones into a per-prompt list of the num_beams best hypotheses, scored
sum(log p) / (generated length incl. EOS) ** length_penalty. The cache is reordered to follow
the surviving beams; the prompt is prefilled once and then expanded to the beams.

Stopping as in ``generate()``: early_stopping=True ends a prompt once it has num_beams finished
hypotheses; False once the best running beam at its current length cannot beat the worst
finished one; "never" uses the maximum length for that bound when length_penalty > 0.
One deliberate difference: generate() pads with EOS when pad_token_id is 0 (``pad or eos``); here
the pad id is used as given.
"""

from __future__ import annotations

from typing import Literal

import torch

from lmlab.arguments import PositiveInt, checked
from lmlab.decoding.incremental import IncrementalLM
from lmlab.decoding.prompts import check_prompt, eos_ids, pad_id
from lmlab.decoding.sampling import Compile
from lmlab.errors import ArgumentError
from lmlab.models.hf import as_causal_lm

_NEG = -1.0e9  # "excluded" score offset, the constant HF uses (keeps results bit-identical)


def _take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t[b, index[b, j], ...] for t [B, N, ...] and index [B, M]."""
    return t.gather(1, index.view(*index.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))


def returns_at_most_the_beams(num_beams: int, num_return_sequences: int) -> None:
    if num_return_sequences > num_beams:
        raise ArgumentError("num_return_sequences", num_return_sequences, "must be at most {num_beams}",
                            num_beams=num_beams)


@checked(rules=returns_at_most_the_beams)
@torch.no_grad()
def beam_search(model, input_ids, max_new_tokens: PositiveInt, num_beams: PositiveInt = 4, length_penalty: float = 1.0,
                early_stopping: bool | Literal["never"] = False, eos_token_id=None,
                num_return_sequences: PositiveInt = 1, attention_mask=None, pad_token_id=None,
                compile: Compile = False):
    """-> (sequences [B * num_return_sequences, prompt + new], scores [B * num_return_sequences]),
    best first per prompt; positions after a hypothesis' EOS hold the pad token. ``compile=True``: the
    steps after the prefill run compiled on a static KV cache (same results)."""
    model = as_causal_lm(model)
    check_prompt(model, input_ids, max_new_tokens, attention_mask)
    batch, prompt_len = input_ids.shape
    n, total, device = num_beams, prompt_len + max_new_tokens, input_ids.device
    eos = eos_ids(eos_token_id, device)
    pad = pad_id(model, pad_token_id, eos)
    k = max(2, 1 + (0 if eos is None else len(eos))) * n
    may_finish = torch.arange(k, device=device) < n  # only the top num_beams candidates may finish

    running = input_ids.new_full((batch, n, total), pad, dtype=torch.long)
    running[:, :, :prompt_len] = input_ids[:, None]
    running_scores = torch.zeros(batch, n, device=device)
    running_scores[:, 1:] = _NEG  # all beams start identical: expand only the first
    hyps, hyp_scores = running.clone(), torch.full((batch, n), _NEG, device=device)
    hyp_lengths = torch.zeros(batch, n, dtype=torch.long, device=device)
    hyp_done = torch.zeros(batch, n, dtype=torch.bool, device=device)
    improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)
    row_offset = torch.arange(batch, device=device)[:, None] * n

    with IncrementalLM(model, batch, total, attention_mask, compile) as lm:
        logprobs = lm.forward(input_ids)[:, -1:].float().log_softmax(-1)  # [B, 1, V], same for every beam
        lm.repeat_interleave(n)
        for cur in range(prompt_len, total):
            if cur > prompt_len:
                logits = lm.forward(running[:, :, cur - 1].reshape(batch * n, 1))[:, -1]
                logprobs = logits.float().log_softmax(-1).view(batch, n, -1)
            vocab = logprobs.shape[-1]
            cand_scores, cand = (logprobs + running_scores[..., None]).view(batch, -1).topk(k)
            source = cand // vocab
            cand_seqs = _take(running, source)
            cand_seqs[:, :, cur] = cand % vocab
            done = torch.full_like(may_finish, cur + 1 == total).expand(batch, k)
            if eos is not None:
                done = done | torch.isin(cand % vocab, eos)

            # live beams: the best num_beams candidates that did not finish
            alive_scores = cand_scores + done.float() * _NEG
            keep = alive_scores.topk(n).indices
            running, running_scores = _take(cand_seqs, keep), _take(alive_scores, keep)
            source = _take(source, keep)

            # finished hypotheses: the best num_beams of the old ones and those that finished now
            generated = cur + 1 - prompt_len
            new_scores = cand_scores / generated**length_penalty
            new_scores = new_scores + (hyp_done.all(-1, keepdim=True) & (early_stopping is True)).float() * _NEG
            new_scores = new_scores + (~improvable).float() * _NEG
            new_scores = new_scores + (~(done & may_finish)).float() * _NEG
            merged = torch.cat([hyp_scores, new_scores], 1)
            best = merged.topk(n).indices
            hyps = _take(torch.cat([hyps, cand_seqs], 1), best)
            hyp_scores = _take(merged, best)
            hyp_done = _take(torch.cat([hyp_done, done & may_finish], 1), best)
            hyp_lengths = _take(torch.cat([hyp_lengths, torch.full_like(cand, generated)], 1), best)
            if cur + 1 == total:
                break

            lm.reorder((source + row_offset).flatten())
            # can the best running beam still beat the worst finished hypothesis?
            bound_len = total - prompt_len if early_stopping == "never" and length_penalty > 0 else generated
            best_running = running_scores[:, :1] / bound_len**length_penalty
            worst_hyp = torch.where(hyp_done, hyp_scores.min(1, keepdim=True).values, _NEG)
            improvable = improvable & (best_running > worst_hyp).any(-1, keepdim=True)
            go_on = improvable.any() & ~done.all()
            if early_stopping is True:
                go_on = go_on & ~hyp_done.all()
            if not go_on:
                break

    r = num_return_sequences
    length = prompt_len + int(hyp_lengths[:, :r].max())
    return hyps[:, :r, :length].reshape(batch * r, length), hyp_scores[:, :r].reshape(-1)
