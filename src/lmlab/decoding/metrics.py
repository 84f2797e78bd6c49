"""Quality figures of generated text, for the decoding callback and ``generate.py``.

A row's generated part runs from ``prompt_len`` up to and including its first EOS; what follows
is padding. Lengths count the EOS; n-gram figures and perplexity look at the generated part.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmlab.decoding.prompts import eos_ids
from lmlab.models.hf import as_causal_lm


def generated_mask(sequences: torch.Tensor, prompt_len: int, eos_token_id=None) -> torch.Tensor:
    """Bool [B, new]: True for generated tokens up to and including each row's first EOS."""
    new = sequences[:, prompt_len:]
    eos = eos_ids(eos_token_id, sequences.device)
    if eos is None:
        return torch.ones_like(new, dtype=torch.bool)
    is_eos = torch.isin(new, eos).long()
    return (is_eos.cumsum(-1) - is_eos) == 0  # no EOS strictly before this position


def _ngrams(sequences, prompt_len, eos_token_id, n) -> tuple[torch.Tensor, torch.Tensor]:
    """(n-grams [M, n], their row [M]) of the generated parts, EOS excluded."""
    new = sequences[:, prompt_len:]
    if new.shape[1] < n:
        return new.new_empty(0, n), new.new_empty(0)
    content = generated_mask(sequences, prompt_len, eos_token_id)
    eos = eos_ids(eos_token_id, sequences.device)
    if eos is not None:
        content &= ~torch.isin(new, eos)
    grams, valid = new.unfold(1, n, 1), content.unfold(1, n, 1).all(-1)
    rows = torch.arange(new.shape[0], device=new.device)[:, None].expand_as(valid)
    return grams[valid], rows[valid]


def distinct_n(sequences, prompt_len, eos_token_id=None, n=2) -> float:
    """Distinct n-grams / all n-grams over every generated part (Li et al. 2016); 0 if there are none."""
    grams, _ = _ngrams(sequences, prompt_len, eos_token_id, n)
    return len(torch.unique(grams, dim=0)) / len(grams) if len(grams) else 0.0


def repetition_rate(sequences, prompt_len, eos_token_id=None, n=4) -> float:
    """seq-rep-n (Welleck et al. 2019): per row, the share of its n-grams that repeat an earlier one
    of the same row, averaged over rows that have any."""
    grams, rows = _ngrams(sequences, prompt_len, eos_token_id, n)
    if not len(grams):
        return 0.0
    totals = torch.bincount(rows)
    unique_rows = torch.unique(torch.cat([rows[:, None], grams], 1), dim=0)[:, 0]
    uniques = torch.bincount(unique_rows, minlength=len(totals))
    has = totals > 0
    return float((1 - uniques[has] / totals[has]).mean())


def decode_metrics(sequences, prompt_len, eos_token_id=None) -> dict[str, float]:
    """mean_new_length, distinct_2 and repetition_rate (seq-rep-4) of a batch of outputs."""
    return {
        "mean_new_length": float(generated_mask(sequences, prompt_len, eos_token_id).sum(-1).double().mean()),
        "distinct_2": distinct_n(sequences, prompt_len, eos_token_id, n=2),
        "repetition_rate": repetition_rate(sequences, prompt_len, eos_token_id, n=4),
    }


@torch.no_grad()
def output_perplexity(model, sequences, prompt_len, attention_mask=None, eos_token_id=None) -> float:
    """exp(mean NLL of the generated tokens given prompt and earlier output) under ``model``:
    one full forward; ``attention_mask`` is the (left-padded) prompt's mask."""
    model = as_causal_lm(model)
    generated = generated_mask(sequences, prompt_len, eos_token_id)
    if attention_mask is None:
        attention_mask = torch.ones_like(sequences[:, :prompt_len])
    mask = torch.cat([attention_mask.long(), generated.long()], 1)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    logits = model(sequences, attention_mask=mask, position_ids=positions).logits[:, prompt_len - 1 : -1]
    nll = F.cross_entropy(logits.float().transpose(1, 2), sequences[:, prompt_len:], reduction="none")
    return math.exp(float(nll[generated].mean()))
