"""Output metrics against plain-Python references and per-row unpadded forwards."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmlab.decoding import decode_metrics, distinct_n, output_perplexity, repetition_rate
from lmlab.models import GPT

EOS, PAD, PROMPT_LEN = 3, 1, 5


def outputs(seed=0, rows=6, new=24, vocab=8):
    """Left-padded prompts and repetitive random continuations, cut by EOS in some rows (then PAD)."""
    g = torch.Generator().manual_seed(seed)
    seqs = torch.randint(4, 4 + vocab, (rows, PROMPT_LEN + new), generator=g)
    mask = torch.ones(rows, PROMPT_LEN, dtype=torch.long)
    for row in range(rows):
        mask[row, : row % 3] = 0
        stop = PROMPT_LEN + [new, 3, 10, 0, new, 17][row % 6]  # 0: EOS first; new: no EOS
        if stop < seqs.shape[1]:
            seqs[row, stop], seqs[row, stop + 1 :] = EOS, PAD
    return seqs.masked_fill(torch.cat([mask, torch.ones_like(seqs[:, PROMPT_LEN:])], 1) == 0, PAD), mask


def generated(row: list[int]) -> list[int]:
    new = row[PROMPT_LEN:]
    return new[: new.index(EOS) + 1] if EOS in new else new


def content(row: list[int]) -> list[int]:
    return [t for t in generated(row) if t != EOS]


def ngrams(tokens, n):
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def test_ngram_metrics_equal_python_reference():
    seqs, _ = outputs()
    rows = seqs.tolist()
    for n in (1, 2, 3, 4):
        grams = [g for row in rows for g in ngrams(content(row), n)]
        assert math.isclose(distinct_n(seqs, PROMPT_LEN, EOS, n), len(set(grams)) / len(grams))
        per_row = [ngrams(content(row), n) for row in rows]
        rep = [1 - len(set(g)) / len(g) for g in per_row if g]
        assert math.isclose(repetition_rate(seqs, PROMPT_LEN, EOS, n), sum(rep) / len(rep), rel_tol=1e-6)
    metrics = decode_metrics(seqs, PROMPT_LEN, EOS)
    assert math.isclose(metrics["mean_new_length"], sum(len(generated(r)) for r in rows) / len(rows))
    assert metrics["distinct_2"] == distinct_n(seqs, PROMPT_LEN, EOS, 2)
    assert metrics["repetition_rate"] == repetition_rate(seqs, PROMPT_LEN, EOS, 4)


def test_metrics_without_eos_or_ngrams():
    seqs = torch.tensor([[5, 6, 7, 7, 7, 7, 8]])
    assert decode_metrics(seqs, 2) == {"mean_new_length": 5.0, "distinct_2": 0.5, "repetition_rate": 0.0}
    assert distinct_n(seqs, 6, n=2) == 0.0 and repetition_rate(seqs, 5) == 0.0  # fewer tokens than n


def test_output_perplexity_equals_per_row_unpadded_forwards():
    torch.manual_seed(0)
    model = GPT(vocab_size=16, block_size=64, n_layer=2, n_head=2, n_embd=16).eval()
    seqs, mask = outputs(rows=6, vocab=12)
    nll, count = 0.0, 0
    with torch.no_grad():
        for row, row_mask in zip(seqs.tolist(), mask.tolist(), strict=True):
            prompt = [t for t, m in zip(row[:PROMPT_LEN], row_mask, strict=True) if m]
            new = generated(row)
            logits = model(torch.tensor([prompt + new])).logits[0, len(prompt) - 1 : -1]
            nll += float(F.cross_entropy(logits, torch.tensor(new), reduction="sum"))
            count += len(new)
    perplexity = output_perplexity(model, seqs, PROMPT_LEN, mask, EOS)
    assert math.isclose(perplexity, math.exp(nll / count), rel_tol=1e-5)
