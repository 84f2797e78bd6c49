"""The static KV cache and the compiled decode step against their slow paths.

Static cache: every strategy runs with a model that feeds each chunk to a static and a dynamic cache
and compares the two logits at every step (speculative rollback and beam reordering included).
Compiled step: every strategy's output with ``compile=`` equals the eager output token for token;
the default suite compiles three cases with dynamo's "eager" backend (whole-graph capture with static
shapes, in seconds), the slow suite every case with inductor, as users run it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers import left_padded_prompts

from lmlab.decoding import beam_search, greedy, sample, speculative
from lmlab.models import GPT

VOCAB, CONTEXT, PROMPT_LEN, EOS, PAD = 80, 48, 6, 3, 1
# float32 rounding of logits of magnitude ~6 summed in another order (the static cache attends over the whole
# buffer): up to ~1e-5 on these models; a wrong mask or position moves logits by O(1)
TOLERANCE = 2e-5

SHAPES = {
    "llama_style": dict(n_kv_head=2, position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False),
    "gpt2_style": dict(),
}
EOS_BIAS = {"llama_style": 1.0, "gpt2_style": 2.0}  # rows finish at different steps within 10 tokens


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only spin on a shared CPU


def build(style: str, seed: int = 0) -> GPT:
    """A tiny GPT with peaked distributions (large init) and a bias towards EOS, so rows finish."""
    torch.manual_seed(seed)
    model = GPT(vocab_size=VOCAB, block_size=CONTEXT, n_layer=2, n_head=4, n_embd=32, **SHAPES[style])
    for p in model.parameters():
        if p.dim() > 1:
            nn.init.normal_(p, std=0.3)
    model.lm_head = nn.Linear(32, VOCAB)
    nn.init.normal_(model.lm_head.weight, std=0.3)
    nn.init.zeros_(model.lm_head.bias)
    model.lm_head.bias.data[EOS] = EOS_BIAS[style]
    return model.eval()


def prompts(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random prompts; batch > 1 is left-padded to lengths 6, 4, 2."""
    return left_padded_prompts(batch, PROMPT_LEN, VOCAB, EOS + 1, PAD, seed)


class PairedCache:
    """A static and a dynamic cache of the same model, taken through every cache operation together."""

    def __init__(self, model: GPT, batch: int, max_len: int | None):
        self.static, self.dynamic = model.new_cache(batch, max_len, static=True), model.new_cache(batch, max_len)
        assert self.static.static and not self.dynamic.static

    def both(self, name, *args):
        for cache in (self.static, self.dynamic):
            getattr(cache, name)(*args)

    def get_seq_length(self):
        assert self.static.get_seq_length() == self.dynamic.get_seq_length()
        return self.static.get_seq_length()

    crop = lambda self, n: self.both("crop", n)  # noqa: E731
    reorder_cache = lambda self, rows: self.both("reorder_cache", rows)  # noqa: E731
    batch_repeat_interleave = lambda self, n: self.both("batch_repeat_interleave", n)  # noqa: E731
    batch_select_indices = lambda self, rows: self.both("batch_select_indices", rows)  # noqa: E731


class StaticVsDynamic(nn.Module):
    """Runs every cached call on both caches and keeps the largest logit gap between them."""

    def __init__(self, model: GPT):
        super().__init__()
        self.inner = model
        self.max_gap, self.calls, self.crops = 0.0, 0, 0

    config = property(lambda self: self.inner.config)
    max_seq_len = property(lambda self: self.inner.max_seq_len)

    def new_cache(self, batch, max_len=None):
        return PairedCache(self.inner, batch, max_len)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        kwargs = dict(attention_mask=attention_mask, position_ids=position_ids)
        static = self.inner(input_ids, cache=cache.static, **kwargs)
        dynamic = self.inner(input_ids, cache=cache.dynamic, **kwargs)
        self.max_gap = max(self.max_gap, float((static.logits - dynamic.logits).abs().max()))
        self.calls += 1
        return static


def strategies(ids, mask, draft):
    """name -> decode(model, **extra): the same calls as users make, each over several steps."""
    return {
        "greedy": lambda m, **kw: greedy(m, ids, 10, eos_token_id=EOS, attention_mask=mask, **kw),
        "sample": lambda m, **kw: sample(m, ids, 10, temperature=1.2, top_p=0.9, attention_mask=mask,
                                         generator=torch.Generator().manual_seed(0), **kw),
        "beam": lambda m, **kw: beam_search(m, ids, 10, 3, eos_token_id=EOS, attention_mask=mask,
                                            num_return_sequences=3, **kw),
        "speculative": lambda m, **kw: speculative(m, draft(m), ids[:1], 20, num_draft_tokens=3, **kw),
        "speculative_sampled": lambda m, **kw: speculative(m, draft(m), ids[:1], 20, num_draft_tokens=3,
                                                           temperature=0.9,
                                                           generator=torch.Generator().manual_seed(0), **kw),
        "prompt_lookup": lambda m, **kw: speculative(m, "prompt_lookup", ids[:1], 20, temperature=0.9,
                                                     generator=torch.Generator().manual_seed(0), **kw),
    }


@pytest.mark.parametrize("style", list(SHAPES))
def test_static_cache_logits_equal_dynamic_at_every_step(style):
    ids, mask = prompts(3)
    draft = StaticVsDynamic(build(style, seed=7))  # unrelated: rejections, so both caches roll back
    for name, run in strategies(ids, mask, lambda target: draft).items():
        checked = StaticVsDynamic(build(style))
        run(checked)
        assert checked.calls > 3, name
        assert checked.max_gap < TOLERANCE, (name, checked.max_gap)
    assert draft.calls > 3 and draft.max_gap < TOLERANCE


def test_static_cache_rollback_and_reorder_match_a_fresh_forward():
    """Moving the position back, then writing over the stale entries; reordering rows in place."""
    model = build("llama_style")
    x = torch.randint(EOS + 1, VOCAB, (2, 14))
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache(2, 20, static=True)
        buffers = [t.data_ptr() for t in cache.keys + cache.values]
        model(torch.randint(EOS + 1, VOCAB, (2, 12)), cache=cache)  # 12 positions of other tokens
        cache.crop(-12)
        model(x[:, :10], cache=cache)
        cache.crop(-2)  # a speculative rollback: positions 8, 9 are stale now
        chunk = model(x[:, 8:14], cache=cache).logits
        torch.testing.assert_close(chunk, full[:, 8:14], atol=1e-5, rtol=1e-4)
        cache.reorder_cache(torch.tensor([1, 1]))
        step = model(x[1:2, 13:14].expand(2, 1), cache=cache).logits
        assert [t.data_ptr() for t in cache.keys + cache.values] == buffers  # same addresses (CUDA graphs)
    ref = model(torch.cat([x[1:2], x[1:2, 13:14]], 1)).logits[:, -1:]
    torch.testing.assert_close(step, ref.expand(2, 1, VOCAB), atol=1e-5, rtol=1e-4)


def test_static_cache_overflow_and_misuse_are_errors():
    model = build("gpt2_style")
    cache = model.new_cache(1, 8, static=True)
    with pytest.raises(ValueError, match="KV cache's length=8"):
        model(torch.ones(1, 9, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="static cache"):
        model(torch.ones(1, 2, dtype=torch.long), cache=model.new_cache(1, 8), cache_position=torch.arange(2))


def assert_same_outputs(eager, compiled, name):
    eager, compiled = (x if isinstance(x, tuple) else (x,) for x in (eager, compiled))
    for a, b in zip(eager, compiled, strict=True):
        if isinstance(a, dict):  # speculative stats: the same acceptance decisions
            assert a == b, name
        elif a.is_floating_point():  # beam scores
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(a, b), name
    assert eager[0].shape[1] > PROMPT_LEN + 2, name  # several compiled steps ran


QUICK = {1: ("beam", "prompt_lookup"), 3: ("greedy",)}  # one graph each: rollback, reordering, padding
EVERY = {1: ("greedy", "sample", "beam", "speculative", "speculative_sampled", "prompt_lookup"),
         3: ("greedy", "sample", "beam")}


@pytest.mark.parametrize("backend,cases", [
    ("eager", QUICK),  # dynamo's whole-graph capture with static shapes, in seconds
    pytest.param(True, EVERY, marks=pytest.mark.slow, id="inductor"),  # what users run
])
def test_compiled_decoding_equals_eager_token_for_token(backend, cases):
    model, drafter = build("llama_style"), build("llama_style", seed=7)
    for batch, names in cases.items():
        ids, mask = prompts(batch, seed=2)
        runs = strategies(ids, mask, lambda target: drafter)
        for name in names:
            assert_same_outputs(runs[name](model), runs[name](model, compile=backend), (name, batch))


def test_compile_with_a_model_without_static_cache_warns_and_decodes_eagerly():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, max_position_embeddings=CONTEXT)).eval()
    ids, _ = prompts(1)
    with pytest.warns(UserWarning, match="no static KV cache; decoding eagerly"):
        out = greedy(hf, ids, 6, compile=True)
    assert torch.equal(out, greedy(hf, ids, 6))


def test_bad_compile_value_is_an_error_before_any_work():
    with pytest.raises(ValueError, match="compile=1.5"):
        greedy(build("gpt2_style"), prompts(1)[0], 4, compile=1.5)


def test_static_caches_are_leased_once_and_reused_after_release():
    """A CUDA graph replays with the buffer addresses it recorded: the next generation of the same shape
    gets the same buffers back, while two live generations (a model drafting for itself) never share."""
    import copy

    from lmlab.decoding.compiled import StaticDecoder

    model = build("gpt2_style")
    decoder = StaticDecoder.of(model, "eager")
    assert StaticDecoder.of(model, "eager") is decoder
    assert StaticDecoder.of(copy.deepcopy(model), "eager") is not decoder  # a copy has its own compiled graphs
    first, second = decoder.lease(2, 16), decoder.lease(2, 16)
    assert first is not second and first.static
    first.length = 5
    decoder.release(first)
    again = decoder.lease(2, 16)
    assert again is first and again.length == 0
    assert decoder.lease(3, 16) is not first  # another shape: other buffers
    greedy(model, prompts(2)[0], 4, compile="eager")  # a generation hands its cache back when it ends
    assert decoder.lease(2, prompts(2)[0].shape[1] + 4).length == 0


@pytest.mark.gpu
def test_compiled_decoding_on_cuda_equals_eager_and_replays_graphs():
    """mode="reduce-overhead" (inductor): CUDA graphs replayed over the leased static caches, same tokens."""
    model, drafter = build("llama_style").cuda(), build("llama_style", seed=7).cuda()
    for batch in (1, 3):
        ids, mask = prompts(batch, seed=2)
        ids, mask = ids.cuda(), None if mask is None else mask.cuda()
        runs = strategies(ids, mask, lambda target: drafter)
        for name in QUICK.get(batch, ()):
            for _ in range(2):  # the second generation replays what the first recorded
                assert_same_outputs(runs[name](model), runs[name](model, compile=True), (name, batch))


def test_decoding_compile_switch_through_the_evaluation_path(make_cfg):
    """`decoding.compile=...` reaches the strategy through Hydra, and the evaluation (inference mode) and a
    later plain call (no_grad) share the leased cache: same texts as eager decoding."""
    import functools

    from hydra.utils import instantiate

    from lmlab.decoding.evaluate import evaluate_strategy, left_pad

    decode = instantiate(make_cfg("decoding=greedy", "decoding.compile=eager").decoding)
    assert isinstance(decode, functools.partial) and decode.keywords["compile"] == "eager"
    model = build("llama_style")
    prompts_ = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    eager = evaluate_strategy("greedy", functools.partial(greedy), model, prompts_, 8, EOS, PAD)
    compiled = evaluate_strategy("greedy", decode, model, prompts_, 8, EOS, PAD)
    assert compiled.completions == eager.completions
    ids, mask = left_pad(prompts_, PAD, "cpu")
    assert torch.equal(decode(model, ids, 8, eos_token_id=EOS, attention_mask=mask, pad_token_id=PAD),
                       greedy(model, ids, 8, eos_token_id=EOS, attention_mask=mask, pad_token_id=PAD))


def test_a_warmed_up_evaluation_decodes_once_untimed_with_the_same_texts():
    """warmup=True (what generate.py and the decoding callback's first evaluation pass for a compiled
    strategy) decodes once before the timed run, and a seeded sampler starts both from the same seed."""
    import functools

    from lmlab.decoding.evaluate import compiles, evaluate_strategy

    calls = []

    def counted_sample(model, input_ids, max_new_tokens, generator=None, **kwargs):
        calls.append(max_new_tokens)
        return sample(model, input_ids, max_new_tokens, generator=generator, **kwargs)

    decode = functools.partial(counted_sample, temperature=1.0, compile="eager")
    model, prompts_ = build("llama_style"), [[5, 6, 7, 8], [9, 10]]
    plain = evaluate_strategy("sample", decode, model, prompts_, 6, EOS, PAD, seed=3)
    warmed = evaluate_strategy("sample", decode, model, prompts_, 6, EOS, PAD, seed=3, warmup=True)
    assert calls == [6, 6, 6] and warmed.completions == plain.completions
    assert compiles(decode) and not compiles(functools.partial(sample, temperature=1.0))
