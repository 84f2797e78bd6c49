"""Logits processors against Hugging Face's, and the sampling / speculative acceptance steps as
statistical tests: the emitted tokens must follow the intended distribution."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lmlab.decoding import speculative_accept
from lmlab.decoding.processors import (
    min_p_filter,
    repetition_penalty,
    sample_from,
    top_k_filter,
    top_p_filter,
    warp_logits,
)

TRIALS, VOCAB = 100_000, 10


def random_logits(seed=0, shape=(8, 50)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 3
    logits[..., :6] = logits[..., 6:12]  # exact ties, where top-k / top-p must choose as HF does
    logits[0, ..., 20:] = float("-inf")
    return logits


@pytest.mark.parametrize("seed", [0, 1])
def test_processors_equal_hf_warpers(seed):
    logits, ids = random_logits(seed), torch.randint(0, 50, (8, 30))
    for value in (1, 5, 12, 50, 80):
        torch.testing.assert_close(top_k_filter(logits, value), TopKLogitsWarper(value)(ids, logits))
    for value in (0.05, 0.5, 0.9, 0.999):
        torch.testing.assert_close(top_p_filter(logits, value), TopPLogitsWarper(value)(ids, logits))
    for value in (0.01, 0.2, 1.0):
        torch.testing.assert_close(min_p_filter(logits, value), MinPLogitsWarper(value)(ids, logits))
    for value in (0.7, 1.5):
        torch.testing.assert_close(repetition_penalty(logits, ids, value),
                                   RepetitionPenaltyLogitsProcessor(value)(ids, logits.clone()))
    hf = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(20), TopPLogitsWarper(0.8),
                              MinPLogitsWarper(0.05)])
    torch.testing.assert_close(warp_logits(logits, 0.7, 20, 0.8, 0.05), hf(ids, logits))


def test_processors_work_on_any_leading_shape():
    logits = random_logits(2, (2, 3, 50))
    torch.testing.assert_close(warp_logits(logits, 0.9, 7, 0.6, 0.1),
                               warp_logits(logits.view(6, 50), 0.9, 7, 0.6, 0.1).view(2, 3, 50))


def emitted_distribution(tokens: torch.Tensor) -> torch.Tensor:
    return torch.bincount(tokens, minlength=VOCAB).double() / len(tokens)


def assert_follows(tokens: torch.Tensor, p: torch.Tensor):
    """Total variation < 0.01, chi-square p-value > 0.001, and no token outside p's support."""
    counts = torch.bincount(tokens, minlength=VOCAB).double()
    p = p.double()
    assert counts[p == 0].sum() == 0
    assert 0.5 * (counts / counts.sum() - p).abs().sum() < 0.01
    support = p > 0
    expected = p[support] / p[support].sum() * counts.sum()
    assert chisquare(counts[support].numpy(), expected.numpy()).pvalue > 1e-3


def test_sample_from_draws_proportionally_to_unnormalised_weights():
    g = torch.Generator().manual_seed(0)
    weights = torch.tensor([0.0, 3.0, 1.0, 0.5, 0.0, 2.0, 0.25, 0.25, 1.0, 2.0])
    tokens = sample_from(weights.expand(TRIALS, -1), g)
    assert_follows(tokens, weights / weights.sum())


def distributions(g, k):
    """p [k + 1, V] (token V-1 impossible) and drafts q [k, V]: unrelated, equal to p, and one that
    never proposes tokens 0..3, which carry much of p's mass."""
    normalise = lambda t: t / t.sum(-1, keepdim=True)
    p = torch.rand(k + 1, VOCAB, generator=g)
    p[:, :4] *= 4
    p[:, -1] = 0
    holes = torch.rand(k, VOCAB, generator=g)
    holes[:, :4] = 0
    p = normalise(p)
    return p, {"unrelated": normalise(torch.rand(k, VOCAB, generator=g)), "equal": p[:k].clone(),
               "holes": normalise(holes)}


@pytest.mark.parametrize("draft", ["unrelated", "equal", "holes"])
def test_speculative_accept_emits_the_target_distribution(draft):
    """100k independent rows: the first emitted token follows p[0]; given one accept, the second
    follows p[1]; after a full accept the bonus token follows p[k]."""
    g = torch.Generator().manual_seed(1)
    k = 3
    p, drafts = distributions(g, k)
    q = drafts[draft]
    draft_tokens = sample_from(q.expand(TRIALS, k, VOCAB), g)
    accepted, nxt = speculative_accept(p.expand(TRIALS, -1, -1), q.expand(TRIALS, -1, -1), draft_tokens, g)
    emitted = torch.cat([draft_tokens, torch.zeros(TRIALS, 1, dtype=torch.long)], 1)
    emitted[torch.arange(TRIALS), accepted] = nxt  # drafts[:n] then the target's token
    assert_follows(emitted[:, 0], p[0])
    second = accepted >= 1
    assert second.sum() > TRIALS / 10
    assert_follows(emitted[second, 1], p[1])
    if draft == "equal":
        assert (accepted == k).all()  # q == p: u * q < p always holds
        assert_follows(nxt, p[k])
    else:
        # the acceptance probability is sum_x min(p, q) at the first position
        expected_first = torch.minimum(p[0], q[0]).sum()
        assert abs(float((accepted >= 1).double().mean()) - float(expected_first)) < 0.01


def test_speculative_accept_is_seeded_and_batched():
    g = torch.Generator().manual_seed(0)
    p, drafts = distributions(g, 2)
    q = drafts["unrelated"].expand(5, -1, -1)
    tokens = sample_from(q, g)
    p = p.expand(5, -1, -1)
    runs = [speculative_accept(p, q, tokens, torch.Generator().manual_seed(9)) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][0].shape == runs[0][1].shape == (5,)
