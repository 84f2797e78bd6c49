"""Speculative decoding: a cheap drafter proposes tokens, one target forward verifies them all.

Lossless (Leviathan et al. 2023, Chen et al. 2023): draft token x is accepted with probability
min(1, p(x) / q(x)); the first rejection is replaced by a sample from norm(max(0, p - q)); after
a full accept the target adds a bonus token from p. p and q are the processed (temperature /
top-k / top-p) distributions of target and draft, so the output follows the target's sampling
distribution exactly. At temperature 0 a draft token is accepted iff it is the target's argmax,
which reproduces greedy decoding token for token.

The drafter is a second causal LM or "prompt_lookup": copy the tokens that followed the earliest
earlier occurrence of the context's last n-gram (as HF's prompt lookup decoding). Rejected
positions are cropped from both KV caches instead of being recomputed. Batch size 1, as HF.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F

from lmlab.arguments import NonNegative, NonNegativeInt, PositiveInt, checked
from lmlab.decoding.incremental import IncrementalLM
from lmlab.decoding.processors import sample_from, warp_logits
from lmlab.decoding.prompts import check_prompt, eos_ids
from lmlab.decoding.sampling import Compile, TopP
from lmlab.errors import ArgumentError
from lmlab.models.hf import as_causal_lm
from lmlab.spec import same_tokenizer

PROMPT_LOOKUP = "prompt_lookup"


def speculative_accept(p: torch.Tensor, q: torch.Tensor, draft_tokens: torch.Tensor, generator=None):
    """The acceptance step, batched.

    p [B, k + 1, V]: target distributions at the k draft positions and the one after them;
    q [B, k, V]: the distributions the draft tokens [B, k] were drawn from.
    Returns (number accepted [B], next token [B]): the target's correction at the first rejected
    position, or the bonus token drawn from p[:, k] when all k were accepted.
    """
    batch, k = draft_tokens.shape
    index = draft_tokens[..., None]
    p_draft, q_draft = p[:, :k].gather(-1, index)[..., 0], q.gather(-1, index)[..., 0]
    u = torch.rand(p_draft.shape, generator=generator, device=p.device, dtype=p.dtype)
    accepted = (u * q_draft < p_draft).long().cumprod(-1).sum(-1)  # u < p/q, without dividing by q = 0
    q_after = torch.cat([q, q.new_zeros(batch, 1, q.shape[-1])], 1)  # residual after a full accept: p
    rows = torch.arange(batch, device=p.device)
    residual = (p[rows, accepted] - q_after[rows, accepted]).clamp_min(0)
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p[rows, accepted])  # p == q: no mass
    return accepted, sample_from(residual, generator)


def prompt_lookup(tokens: torch.Tensor, num_tokens: int, max_ngram_size: int = 2) -> torch.Tensor:
    """Draft [num <= num_tokens] for a 1-D context: what followed the earliest earlier occurrence of
    its last n-gram (longest n first); empty when nothing matches."""
    length = tokens.shape[0]
    for size in range(min(max_ngram_size, length - 1), 0, -1):
        windows = tokens.unfold(0, size, 1)[:-1]  # every n-gram except the suffix itself
        hits = (windows == tokens[-size:]).all(-1).nonzero()
        if len(hits):
            start = int(hits[0]) + size
            return tokens[start : start + num_tokens]
    return tokens[:0]


def draft_exists(draft: str | torch.nn.Module) -> None:
    """A draft given by name is prompt lookup or a checkpoint lmlab can load."""
    if isinstance(draft, str) and draft != PROMPT_LOOKUP:
        from lmlab.checkpoint import check_checkpoint

        check_checkpoint(draft, field="draft")


def check_draft(draft, target, length: int, draft_tokenizer: dict | None = None,
                target_tokenizer: dict | None = None, name: str | Path | None = None) -> None:
    """That ``draft`` can propose tokens for ``target`` over ``length`` tokens (prompt + new ones), as models on
    any device (meta included): the same vocabulary, the same tokenizer when both specs (lmlab.spec) are given,
    a context of at least ``length``. ArgumentError naming the draft (``name``: its path), before decoding."""
    name = name or f"<{type(draft).__name__}>"
    vocab, target_vocab = draft.config.vocab_size, target.config.vocab_size
    if vocab != target_vocab:
        raise ArgumentError("draft", name, f"its vocabulary has {vocab} tokens, the target's {target_vocab}: a draft "
                            "must be trained with the target's tokenizer")
    if draft_tokenizer and target_tokenizer and not same_tokenizer(draft_tokenizer, target_tokenizer):
        raise ArgumentError("draft", name, f"was trained with another tokenizer than the target (both have {vocab} "
                            "tokens, but the same ids stand for different text), so its proposals would be other "
                            "tokens; train the draft with the target's tokenizer")
    if draft.max_seq_len < length:
        raise ArgumentError("draft", name, f"its context ({draft.max_seq_len} tokens) is shorter than the prompt + "
                            f"new tokens to decode ({length}); use a draft with a longer context or fewer new tokens")


def draft_too_large(draft_params: int, target_params: int) -> str | None:
    """A warning when the draft has at least as many parameters as the target: each draft token then costs about
    a target forward, so speculation cannot be faster than decoding the target alone."""
    if draft_params < target_params:
        return None
    return (f"the draft has {draft_params:,} parameters, the target {target_params:,}; a draft at least as large as "
            "its target makes speculative decoding slower than decoding the target alone")


@checked(rules=draft_exists)
@torch.no_grad()
def speculative(target, draft: str | torch.nn.Module, input_ids, max_new_tokens: PositiveInt,
                num_draft_tokens: PositiveInt = 4, temperature: NonNegative = 0.0, top_k: NonNegativeInt = 0,
                top_p: TopP = 1.0, eos_token_id=None, generator=None, max_ngram_size: PositiveInt = 2,
                compile: Compile = False):
    """-> (sequences [1, prompt + new], stats dict). ``compile=True``: target and draft forwards after
    their prefill run compiled on static KV caches (rollback moves the cache position; same tokens).

    stats: proposed / accepted draft tokens, acceptance_rate, target_forwards (each verifies a draft
    and yields >= 1 token), draft_forwards, new_tokens, mean_accepted (per target forward) and
    tokens_per_target_forward (1.0 for plain decoding).
    """
    target = as_causal_lm(target)
    check_prompt(target, input_ids, max_new_tokens)
    if input_ids.shape[0] != 1:
        raise ValueError(f"speculative decoding takes batch size 1 (as HF); input_ids has {len(input_ids)}")
    lookup = isinstance(draft, str)
    if lookup and draft != PROMPT_LOOKUP:
        raise ArgumentError("draft", draft, f"allowed: a causal LM (load a checkpoint first) or {PROMPT_LOOKUP!r}")
    if not lookup:
        draft = as_causal_lm(draft)
        check_draft(draft, target, input_ids.shape[1] + max_new_tokens)
    eos = eos_ids(eos_token_id, input_ids.device)
    greedy = temperature == 0
    warp = lambda logits: warp_logits(logits.float(), temperature, top_k, top_p).softmax(-1)

    prompt_len = input_ids.shape[1]
    total = prompt_len + max_new_tokens
    tokens = input_ids.new_empty((1, total), dtype=torch.long)
    tokens[:, :prompt_len] = input_ids
    with IncrementalLM(target, 1, total, compile=compile) as verifier, (
            contextlib.nullcontext() if lookup else IncrementalLM(draft, 1, total, compile=compile)) as drafter:
        length, stats = _rounds(verifier, drafter, tokens, prompt_len, num_draft_tokens, greedy, warp, eos,
                                generator, max_ngram_size)
    stats["new_tokens"] = length - prompt_len
    return tokens[:, :length], speculative_rates(stats)


def _rounds(verifier: IncrementalLM, drafter: IncrementalLM | None, tokens, length, num_draft_tokens, greedy, warp,
            eos, generator, max_ngram_size) -> tuple[int, dict]:
    """Draft (``drafter``, or prompt lookup when None), verify, accept until ``tokens`` [1, total] is full
    or EOS: (tokens filled, counts)."""
    total = tokens.shape[1]
    stats = dict(proposed=0, accepted=0, target_forwards=0, draft_forwards=0)
    while length < total:
        budget = min(num_draft_tokens, total - length - 1)  # the target always adds one token itself
        if drafter is None:
            proposal, q = prompt_lookup(tokens[0, :length], budget, max_ngram_size)[None], None
        else:
            proposal, q = _draft(drafter, tokens[:, drafter.length : length], budget, greedy, warp, generator)
            stats["draft_forwards"] += budget
        k = proposal.shape[1]
        logits = verifier.forward(torch.cat([tokens[:, verifier.length : length], proposal], 1))[:, -k - 1 :]
        if greedy:
            choice = logits.argmax(-1)
            accepted = (proposal == choice[:, :k]).long().cumprod(-1).sum(-1)
            nxt = choice[0, accepted]
        else:
            p = warp(logits)
            q = F.one_hot(proposal, p.shape[-1]).to(p.dtype) if q is None else q
            accepted, nxt = speculative_accept(p, q, proposal, generator)
        new = torch.cat([proposal[0], nxt]).scatter(0, accepted.view(1), nxt)  # drafts[:n], then target's
        first_eos = torch.full((), k + 1, device=new.device)
        if eos is not None:
            is_eos = torch.isin(new, eos) & (torch.arange(k + 1, device=new.device) <= accepted)
            first_eos = torch.where(is_eos.any(), is_eos.long().argmax(), first_eos)
        n_accepted, first_eos = torch.stack([accepted.view(()), first_eos]).tolist()  # the round's one sync
        stats["proposed"] += k
        stats["accepted"] += n_accepted
        stats["target_forwards"] += 1
        keep = min(n_accepted, first_eos) + 1
        tokens[:, length : length + keep] = new[:keep]
        length += keep
        if first_eos <= n_accepted:
            break
        verifier.truncate(length - 1)
        if drafter is not None:
            drafter.truncate(length - 1)
    return length, stats


SPECULATIVE_COUNTS = ("proposed", "accepted", "target_forwards", "draft_forwards", "new_tokens")


def speculative_rates(counts: dict) -> dict:
    """The counts plus acceptance_rate (accepted / proposed), mean_accepted (accepted draft tokens per
    target forward) and tokens_per_target_forward (new tokens per target forward; 1.0 = plain decoding).
    Also sums over several decodes: pass the summed counts."""
    forwards = max(counts["target_forwards"], 1)
    return {
        **{key: counts[key] for key in SPECULATIVE_COUNTS},
        "acceptance_rate": counts["accepted"] / max(counts["proposed"], 1),
        "mean_accepted": counts["accepted"] / forwards,
        "tokens_per_target_forward": counts["new_tokens"] / forwards,
    }


def _draft(drafter: IncrementalLM, pending: torch.Tensor, k: int, greedy: bool, warp, generator):
    """k tokens from the draft model, fed ``pending`` (the context its cache lacks) first.

    -> (tokens [1, k], the distributions they were drawn from [1, k, V], or None when greedy)."""
    proposal, dists = [], []
    for _ in range(k):
        logits = drafter.forward(pending)[:, -1]
        if greedy:
            pending = logits.argmax(-1, keepdim=True)
        else:
            dists.append(warp(logits))
            pending = sample_from(dists[-1], generator)[:, None]
        proposal.append(pending)
    proposal = torch.cat(proposal, 1) if proposal else pending[:, :0]
    return proposal, (torch.stack(dists, 1) if dists else None)
