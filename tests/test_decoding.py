"""Decoding strategies against Hugging Face generate() and uncached references, on tiny random models.

Models are tiny (2 layers, width 32, vocab 96) with large init (std 0.3) so distributions are peaked
and argmax near-ties are rare. An output bias on EOS makes the models really emit it (at different
steps per row and beam), so the finished-row and finished-hypothesis paths run.
"""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
import torch.nn as nn
from helpers import left_padded_prompts
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lmlab.decoding import beam_search, greedy, sample, speculative
from lmlab.models import GPT
from lmlab.models.hf import as_causal_lm

VOCAB, PAD, BOS, EOS, CONTEXT, PROMPT_LEN = 96, 1, 2, 3, 64, 7
SPECIAL = dict(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
EOS_BIAS = {"llama": 3.5, "gpt2": 4.0, "gpt": 3.0}  # EOS in 10-60% of greedy steps and in most beams

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only spin on a shared CPU


@functools.cache
def build(kind: str, seed: int = 0) -> nn.Module:
    model = _random_model(kind, seed)
    head = nn.Linear(model.lm_head.in_features, VOCAB)  # untied copy of the output layer, plus a bias on EOS
    head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    nn.init.zeros_(head.bias)
    head.bias.data[EOS] = EOS_BIAS[kind]
    model.lm_head = head
    return model.eval()


def _random_model(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "llama":
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                             initializer_range=0.3, **SPECIAL)
        return LlamaForCausalLM(config)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=CONTEXT,
                            initializer_range=0.3, **SPECIAL)
        return GPT2LMHeadModel(config)
    model = GPT(vocab_size=VOCAB, block_size=CONTEXT, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                position="rope", norm="rmsnorm", mlp="swiglu", tie_embeddings=False)
    for p in model.parameters():
        if p.dim() > 1:
            nn.init.normal_(p, std=0.3)
    return model


def prompts(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random prompts; batch > 1 is left-padded to lengths 7, 5, 3, ..."""
    return left_padded_prompts(batch, PROMPT_LEN, VOCAB, EOS + 1, PAD, seed)


def uncached_greedy(model, ids, mask, max_new_tokens, eos):
    """Reference: argmax of a full forward over everything so far at every step (no cache)."""
    model = as_causal_lm(model)
    mask = torch.ones_like(ids) if mask is None else mask
    unfinished = torch.ones(len(ids), dtype=torch.bool)
    for _ in range(max_new_tokens):
        full = torch.cat([mask, mask.new_ones(len(ids), ids.shape[1] - mask.shape[1])], 1)
        positions = (full.cumsum(-1) - 1).clamp_min(0)
        nxt = model(ids, attention_mask=full, position_ids=positions).logits[:, -1].argmax(-1)
        nxt = torch.where(unfinished, nxt, PAD)
        unfinished &= nxt != eos
        ids = torch.cat([ids, nxt[:, None]], 1)
        if not unfinished.any():
            break
    return ids


def assert_no_near_ties(model, seqs, mask, margin: float = 1e-3):
    """Token-for-token equality of two greedy decodes is only meaningful where the argmax is clear: a top-2
    logit gap within float32 rounding (~1e-5 here) could flip between two computations, or between two
    machines. Checks that every generated position of `seqs` has a gap of at least `margin`."""
    mask = torch.ones(len(seqs), PROMPT_LEN, dtype=torch.long) if mask is None else mask
    full = torch.cat([mask, torch.ones_like(seqs[:, PROMPT_LEN:])], 1)
    with torch.no_grad():
        logits = as_causal_lm(model)(seqs, attention_mask=full, position_ids=(full.cumsum(-1) - 1).clamp_min(0))
    top2 = logits.logits[:, PROMPT_LEN - 1 : -1].float().topk(2, dim=-1).values
    is_eos = (seqs[:, PROMPT_LEN:] == EOS).long()
    decoded = (is_eos.cumsum(-1) - is_eos) == 0  # up to and including EOS; padding after it is not decoded
    gap = (top2[..., 0] - top2[..., 1])[decoded].min().item()
    assert gap > margin, f"a near-tie (top-2 logit gap {gap:.2e}): change the seed or the model"


# ---------------------------------------------------------------- greedy and sampling


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("with_eos", [False, True])
def test_greedy_equals_hf_generate(kind, batch, with_eos):
    model, (ids, mask) = build(kind), prompts(batch)
    eos = EOS if with_eos else None
    hf_eos = eos if with_eos else []  # [] keeps generate() from using the config's EOS
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                              eos_token_id=hf_eos, pad_token_id=PAD)
    out = greedy(model, ids, 16, eos_token_id=eos, attention_mask=mask)
    assert torch.equal(out, expected)
    assert_no_near_ties(model, out, mask)
    if with_eos:
        assert (out[:, PROMPT_LEN:] == eos).any()


@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_own_gpt_equals_uncached_reference(batch):
    model, (ids, mask) = build("gpt"), prompts(batch)
    out = greedy(model, ids, 20, eos_token_id=EOS, attention_mask=mask, pad_token_id=PAD)
    assert torch.equal(out, uncached_greedy(model, ids, mask, 20, EOS))
    assert_no_near_ties(model, out, mask)
    assert (out[:, PROMPT_LEN:] == EOS).any()


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt"])
def test_sample_top_k_1_and_temperature_0_equal_greedy(kind):
    model, (ids, mask) = build(kind), prompts(3)
    expected = greedy(model, ids, 12, eos_token_id=EOS, attention_mask=mask)
    g = torch.Generator().manual_seed(0)
    for kwargs in (dict(top_k=1, temperature=0.7), dict(temperature=0.0)):
        out = sample(model, ids, 12, eos_token_id=EOS, attention_mask=mask, generator=g, **kwargs)
        assert torch.equal(out, expected)


def test_sample_is_deterministic_for_a_seeded_generator():
    model, (ids, mask) = build("gpt"), prompts(3)
    runs = [sample(model, ids, 16, temperature=1.3, top_p=0.95, attention_mask=mask,
                   generator=torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_sample_draws_from_the_processed_distribution():
    """20k rows of one prompt, one step: token frequencies match softmax(warped logits)."""
    from scipy.stats import chisquare

    model, (ids, _) = build("gpt"), prompts(1)
    settings = dict(temperature=1.5, top_k=20, top_p=0.9, repetition_penalty=1.3)
    rows = 20_000
    out = sample(model, ids.expand(rows, -1), 1, generator=torch.Generator().manual_seed(0), **settings)
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    with torch.no_grad():
        logits = model(ids).logits[:, -1]
    for proc in (RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(1.5), TopKLogitsWarper(20),
                 TopPLogitsWarper(0.9)):
        logits = proc(ids, logits)
    p = logits[0].double().softmax(-1)  # float64: expected counts must sum to the observed total
    counts = torch.bincount(out[:, -1], minlength=VOCAB).double()
    assert counts[p == 0].sum() == 0
    support = p > 0
    assert 0.5 * (counts / rows - p).abs().sum() < 0.02
    expected = p[support] / p[support].sum() * counts.sum()  # exact to float64 rounding on any machine
    assert chisquare(counts[support].numpy(), expected.numpy()).pvalue > 1e-3


# ---------------------------------------------------------------- beam search


BEAM_CASES = list(itertools.product([2, 4], [0.5, 1.0, 2.0], [True, False]))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_beam_search_equals_hf_generate(kind):
    model, (ids, mask) = build(kind), prompts(3)
    finished_with_eos = 0
    for num_beams, length_penalty, early_stopping in BEAM_CASES + [(4, 2.0, "never"), (3, 1.0, "never")]:
        kwargs = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                      num_return_sequences=num_beams)
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=EOS,
                             pad_token_id=PAD, output_scores=True, return_dict_in_generate=True, **kwargs)
        seqs, scores = beam_search(model, ids, 10, eos_token_id=EOS, attention_mask=mask, **kwargs)
        assert torch.equal(seqs, ref.sequences), kwargs
        torch.testing.assert_close(scores, ref.sequences_scores, rtol=1e-5, atol=1e-5)
        finished_with_eos += int((seqs[:, PROMPT_LEN:] == EOS).any(-1).sum())
    assert finished_with_eos >= 2 * len(BEAM_CASES)  # EOS-finished hypotheses are part of what was compared


def test_beam_search_num_return_sequences_and_no_eos_equal_hf():
    model, (ids, mask) = build("llama"), prompts(3)
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=8, num_beams=4, num_return_sequences=2,
                         do_sample=False, eos_token_id=[], pad_token_id=PAD, output_scores=True,
                         return_dict_in_generate=True)
    seqs, scores = beam_search(model, ids, 8, 4, num_return_sequences=2, attention_mask=mask)
    assert torch.equal(seqs, ref.sequences)
    torch.testing.assert_close(scores, ref.sequences_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length_penalty", [0.5, 2.0])
def test_beam_scores_own_gpt_equal_uncached_rescoring(length_penalty):
    """Each returned score is sum(log p(generated)) / length ** length_penalty under a full forward."""
    model, (ids, mask) = build("gpt"), prompts(3)
    seqs, scores = beam_search(model, ids, 10, 3, length_penalty, eos_token_id=EOS, num_return_sequences=3,
                               attention_mask=mask)
    full = torch.cat([mask.repeat_interleave(3, 0), torch.ones_like(seqs[:, PROMPT_LEN:])], 1)
    logp = model(seqs, attention_mask=full, position_ids=(full.cumsum(-1) - 1).clamp_min(0)).logits
    logp = logp[:, PROMPT_LEN - 1 : -1].log_softmax(-1).gather(-1, seqs[:, PROMPT_LEN:, None])[..., 0]
    new = seqs[:, PROMPT_LEN:]
    is_eos = (new == EOS).long()
    generated = (is_eos.cumsum(-1) - is_eos) == 0
    expected = (logp * generated).sum(-1) / generated.sum(-1) ** length_penalty
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    assert (scores.view(3, 3).diff(dim=1) <= 0).all()  # best first
    assert is_eos.any()


# ---------------------------------------------------------------- speculative decoding


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt"])
def test_speculative_greedy_equals_greedy(kind):
    target, (ids, _) = build(kind), prompts(1)
    unrelated = build(kind, seed=7)
    for eos_id in (None, EOS):
        expected = greedy(target, ids, 40, eos_token_id=eos_id)
        assert_no_near_ties(target, expected, None)
        for draft, k in ((target, 4), (unrelated, 3), ("prompt_lookup", 4)):
            out, stats = speculative(target, draft, ids, 40, num_draft_tokens=k, eos_token_id=eos_id)
            assert torch.equal(out, expected), (draft if isinstance(draft, str) else type(draft).__name__)
            assert stats["new_tokens"] == expected.shape[1] - PROMPT_LEN
            if draft is target:
                assert stats["accepted"] == stats["proposed"] > 0
            if draft is unrelated:
                assert stats["acceptance_rate"] < 0.3
            if draft == "prompt_lookup" and eos_id is None:
                assert stats["proposed"] > 0


def test_speculative_sampling_self_draft_accepts_all_and_is_seeded():
    target, (ids, _) = build("llama"), prompts(1)
    runs = [speculative(target, target, ids, 30, temperature=0.8, top_k=30, top_p=0.95,
                        generator=torch.Generator().manual_seed(seed)) for seed in (3, 3, 4)]
    assert torch.equal(runs[0][0], runs[1][0]) and not torch.equal(runs[0][0], runs[2][0])
    assert runs[0][1]["acceptance_rate"] > 0.95  # p == q up to rounding: every draft token is kept
    lookup, stats = speculative(target, "prompt_lookup", ids, 30, temperature=0.8,
                                generator=torch.Generator().manual_seed(0))
    assert lookup.shape == (1, PROMPT_LEN + 30) and stats["target_forwards"] <= 30


# ---------------------------------------------------------------- cached == uncached at every step


class HistoryCache:
    """The real cache plus the token ids and positions it holds, kept in step through every cache op."""

    def __init__(self, cache, batch):
        self.cache = cache
        self.ids = self.positions = torch.zeros(batch, 0, dtype=torch.long)

    def _rows(self, fn):
        self.ids, self.positions = fn(self.ids), fn(self.positions)

    def get_seq_length(self):
        return self.cache.get_seq_length()

    def crop(self, n):
        self.cache.crop(n)
        self._rows(lambda t: t[:, :n])

    def reorder_cache(self, rows):
        self.cache.reorder_cache(rows)
        self._rows(lambda t: t[rows])

    def batch_select_indices(self, rows):
        self.reorder_cache(rows)

    def batch_repeat_interleave(self, n):
        self.cache.batch_repeat_interleave(n)
        self._rows(lambda t: t.repeat_interleave(n, 0))


class CheckedLM(nn.Module):
    """Every cached call is repeated without a cache over the whole history; the largest logit gap is kept."""

    def __init__(self, model):
        super().__init__()
        self.inner = as_causal_lm(model)
        self.max_gap, self.calls = 0.0, 0

    config = property(lambda self: self.inner.config)
    max_seq_len = property(lambda self: self.inner.max_seq_len)

    def new_cache(self, batch, max_len=None):
        return HistoryCache(self.inner.new_cache(batch, max_len), batch)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        batch, t = input_ids.shape
        past = cache.ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past, past + t).expand(batch, t)
        cache.ids = torch.cat([cache.ids, input_ids], 1)
        cache.positions = torch.cat([cache.positions, position_ids], 1)
        out = self.inner(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache.cache)
        full_mask = torch.ones_like(cache.ids) if attention_mask is None else attention_mask
        ref = self.inner(cache.ids, attention_mask=full_mask, position_ids=cache.positions).logits[:, -t:]
        self.max_gap = max(self.max_gap, float((out.logits - ref).abs().max()))
        self.calls += 1
        return out


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt"])
def test_cached_logits_equal_uncached_at_every_step(kind):
    ids, mask = prompts(3)
    draft = CheckedLM(build(kind, seed=7))  # an unrelated draft: rejections, so both caches get cropped
    runs = {
        "greedy": lambda m: greedy(m, ids, 10, eos_token_id=EOS, attention_mask=mask),
        "sample": lambda m: sample(m, ids, 10, temperature=1.2, top_p=0.9, attention_mask=mask,
                                   generator=torch.Generator().manual_seed(0)),
        "beam": lambda m: beam_search(m, ids, 10, 3, eos_token_id=EOS, attention_mask=mask),
        "speculative": lambda m: speculative(m, draft, ids[:1], 20, num_draft_tokens=3),
        "prompt_lookup": lambda m: speculative(m, "prompt_lookup", ids[:1], 20, temperature=0.9,
                                               generator=torch.Generator().manual_seed(0)),
    }
    for name, run in runs.items():
        checked = CheckedLM(build(kind))
        run(checked)
        assert checked.calls > 1, name
        assert checked.max_gap < 1e-4, (name, checked.max_gap)
    assert draft.calls > 1 and draft.max_gap < 1e-4


# ---------------------------------------------------------------- bad input


def test_bad_arguments_raise_value_errors_before_any_work():
    model, (ids, mask) = CheckedLM(build("gpt")), prompts(3)
    one = ids[:1]
    bad = {
        "temperature": lambda: sample(model, ids, 4, temperature=-0.1),
        "top_p": lambda: sample(model, ids, 4, top_p=0.0),
        "top_p ": lambda: sample(model, ids, 4, top_p=1.5),
        "top_k": lambda: sample(model, ids, 4, top_k=-1),
        "min_p": lambda: sample(model, ids, 4, min_p=2.0),
        "repetition_penalty": lambda: sample(model, ids, 4, repetition_penalty=0.0),
        "num_beams": lambda: beam_search(model, ids, 4, 0),
        "num_return_sequences": lambda: beam_search(model, ids, 4, 2, num_return_sequences=3),
        "early_stopping": lambda: beam_search(model, ids, 4, 2, early_stopping="sometimes"),
        "input_ids is empty": lambda: greedy(model, ids[:, :0], 4),
        "all padding": lambda: greedy(model, ids, 4, attention_mask=torch.zeros_like(mask)),
        "LEFT-padded": lambda: greedy(model, ids, 4, attention_mask=mask.flip(1)),
        "max_seq_len": lambda: greedy(model, ids, CONTEXT - PROMPT_LEN + 1),
        "max_new_tokens": lambda: greedy(model, ids, 0),
        "batch size 1": lambda: speculative(model, model, ids, 4),
        "num_draft_tokens": lambda: speculative(model, model, one, 4, num_draft_tokens=0),
        "draft=": lambda: speculative(model, "ngram", one, 4),
        "its vocabulary has": lambda: speculative(model, GPT(vocab_size=VOCAB + 1, block_size=CONTEXT), one, 4),
        "eos_token_id": lambda: greedy(model, ids, 4, eos_token_id="eos"),
    }
    for needle, call in bad.items():
        with pytest.raises(ValueError, match=needle.strip()):
            call()
    assert model.calls == 0
