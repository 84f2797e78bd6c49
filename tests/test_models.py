"""lmlab's GPT and the Hugging Face adapter pass the same interface tests."""

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lmlab.models import GPT, CausalLMOutput
from lmlab.models.hf import HFCausalLM, as_causal_lm
from lmlab.optim import param_groups

V = 97


def tiny_gpt(**kw):
    return GPT(vocab_size=V, block_size=64, n_layer=2, n_head=4, n_embd=32, **kw)


def tiny_llama_hf():
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return HFCausalLM(LlamaForCausalLM(cfg))


def tiny_gpt2_hf():
    cfg = GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return HFCausalLM(GPT2LMHeadModel(cfg))


MODELS = {
    "gpt": tiny_gpt,
    "gpt_llama_style": lambda: tiny_gpt(position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2,
                                        bias=False, tie_embeddings=False),
    "hf_llama": tiny_llama_hf,
    "hf_gpt2": tiny_gpt2_hf,
}


@pytest.fixture(params=list(MODELS))
def model(request):
    torch.manual_seed(0)
    return MODELS[request.param]().eval()


def test_forward_shapes(model):
    x = torch.randint(0, V, (2, 10))
    out = model(x, output_hidden=True)
    assert isinstance(out, CausalLMOutput)
    assert out.logits.shape == (2, 10, V)
    assert out.hidden.shape[:2] == (2, 10)
    assert model.max_seq_len == 64
    assert 0 < model.num_params() <= sum(p.numel() for p in model.parameters())


def test_cached_decoding_equals_full_forward(model):
    x = torch.randint(0, V, (3, 16))
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache(3)
        chunks = [model(x[:, :6], cache=cache).logits]
        chunks += [model(x[:, i : i + 1], cache=cache).logits for i in range(6, 16)]
    assert cache.get_seq_length() == 16
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-4)


def test_crop_then_multi_token_chunk(model):
    """Speculative decoding drops rejected positions and verifies several tokens at once."""
    x = torch.randint(0, V, (1, 14))
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache(1)
        model(x[:, :12], cache=cache)
        cache.crop(-4)
        chunk = model(x[:, 8:14], cache=cache).logits
    torch.testing.assert_close(chunk, full[:, 8:14], atol=1e-5, rtol=1e-4)


def test_left_padding_matches_unpadded(model):
    x = torch.randint(3, V, (1, 9))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 9)], dim=1).long()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(x).logits
        out = model(padded, attention_mask=mask, position_ids=position_ids).logits[:, 3:]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_cache_reorder_and_repeat(model):
    x = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        cache = model.new_cache(2)
        model(x[:, :7], cache=cache)
        cache.reorder_cache(torch.tensor([1, 1]))
        step = model(x[1:2, 7:].expand(2, 1), cache=cache).logits
        ref = model(x[1:2]).logits[:, 7:]
    torch.testing.assert_close(step, ref.expand(2, 1, V), atol=1e-5, rtol=1e-4)


def test_training_attention_uses_is_causal_without_mask(monkeypatch):
    """No explicit mask in training, so SDPA may pick the flash kernel."""
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append((kwargs.get("attn_mask"), kwargs.get("is_causal")))
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    tiny_gpt()(torch.randint(0, V, (2, 8)))
    assert calls and all(mask is None and causal for mask, causal in calls)


def test_context_overflow_is_an_error():
    with pytest.raises(ValueError, match="block_size"):
        tiny_gpt()(torch.randint(0, V, (1, 65)))


@pytest.mark.parametrize("field,value", [("norm", "batchnorm"), ("position", "alibi"), ("mlp", "moe")])
def test_bad_model_options_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}='{value}': must be one of "):
        tiny_gpt(**{field: value})


def test_as_causal_lm_wraps_hf_models_only():
    gpt = tiny_gpt()
    assert as_causal_lm(gpt) is gpt
    assert isinstance(as_causal_lm(tiny_llama_hf().hf), HFCausalLM)


def test_param_groups_exclude_biases_norms_embeddings(model):
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    assert not embedding_ids & {id(p) for p in decay["params"]}
    n_total = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_total


@pytest.mark.slow
def test_gpt_compiles_without_graph_breaks():
    model = tiny_gpt(position="rope", norm="rmsnorm", mlp="swiglu").eval()
    x = torch.randint(0, V, (2, 16))
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x).logits, model(x).logits, atol=1e-4, rtol=1e-4)


def test_hf_model_as_the_readme_names_it_trains_gpt2(run_train_py, tmp_path):
    """`python train.py model=hf model.architecture=gpt2` (before: "model.hidden_size=128: not a field of the gpt2
    config"): conf/model/hf.yaml's sizes are fields every common architecture takes (GPT-2 under its aliases), its
    Llama-only fields apply to Llama alone."""
    import yaml

    run_train_py("model=hf", "model.architecture=gpt2", "model.num_hidden_layers=1", "callbacks=none",
                 run_dir=tmp_path / "run")
    model = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    assert model["architecture"] == "gpt2" and model["hidden_size"] == 128


def test_hf_fields_resolve_the_architecture_s_aliases_and_per_architecture_fields():
    from lmlab.errors import ArgumentError
    from lmlab.models.hf import HFCausalLM

    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 64}
    llama_only = {"llama": {"intermediate_size": 48, "num_key_value_heads": 1}}
    gpt2 = HFCausalLM.build("gpt2", vocab_size=96, per_architecture=llama_only, **sizes).config
    assert (gpt2.n_embd, gpt2.n_layer, gpt2.n_head, gpt2.n_positions, gpt2.n_inner) == (32, 1, 2, 64, None)
    llama = HFCausalLM.build("llama", vocab_size=96, per_architecture=llama_only, **sizes).config
    assert (llama.hidden_size, llama.intermediate_size, llama.num_key_value_heads) == (32, 48, 1)
    for kwargs, message in [
        ({"n_embd": 16}, r"^n_embd=16: the same field as hidden_size=32 in the gpt2 config; give one of them$"),
        ({"per_architecture": {"llama": {"intermediate_sise": 48}}},
         r"^per_architecture\.llama\.intermediate_sise=48: not a field of the llama config; did you mean "
         r"per_architecture\.llama\.intermediate_size\?$"),
        ({"per_architecture": {"lama": {}}}, r"^per_architecture\.lama='lama': not a Hugging Face model type; did "
                                             r"you mean llama\?$"),
        ({"hidden_size": 33}, r"^hidden_size=33: must be divisible by num_attention_heads=2$"),
        ({"intermediate_size": 64}, r"^intermediate_size=64: not a field of the gpt2 config"),
    ]:
        with pytest.raises(ArgumentError, match=message):
            HFCausalLM.build("gpt2", vocab_size=96, **{**sizes, **kwargs})
