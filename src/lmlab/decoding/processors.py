"""Logits processing with Hugging Face ``generate()`` semantics, and sampling without a host sync.

Order as in ``generate()``: repetition penalty, then temperature, top-k, top-p, min-p. Filtered
tokens get -inf. Every function works on logits of any leading shape [..., V].
"""

from __future__ import annotations

import torch


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL penalty on every token id in ``seen`` [B, L] (prompt included, as HF): logit / penalty if
    positive, logit * penalty if negative."""
    if penalty == 1.0:
        return logits
    score = logits.gather(-1, seen)
    return logits.scatter(-1, seen, torch.where(score < 0, score * penalty, score / penalty))


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` largest logits (ties with the k-th kept too, as HF); 0 = off."""
    if top_k == 0 or top_k >= logits.shape[-1]:
        return logits
    kth = logits.topk(top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p``; 1 = off."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1)  # ascending, as HF (decides which of equal logits go)
    drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
    drop[..., -1] = False  # the most likely token always stays
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens less likely than ``min_p`` times the most likely one; 0 = off."""
    if min_p == 0.0:
        return logits
    probs = logits.softmax(-1)
    return logits.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), float("-inf"))


def warp_logits(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> torch.Tensor:
    """Temperature (> 0), then top-k, top-p and min-p: the distribution sampling draws from."""
    if temperature != 1.0:
        logits = logits / temperature
    return min_p_filter(top_p_filter(top_k_filter(logits, top_k), top_p), min_p)


def sample_from(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of non-negative (unnormalised) ``weights`` [..., V].

    argmax(w / E) with E ~ Exp(1) picks i with probability w_i / sum(w), like torch.multinomial but
    with no device-to-host sync (the gpt-fast trick). E is clamped away from 0 so 0/0 cannot occur.
    """
    e = torch.empty_like(weights, dtype=torch.float32).exponential_(generator=generator)
    return (weights.float() / e.clamp_min_(torch.finfo(torch.float32).tiny)).argmax(-1)
