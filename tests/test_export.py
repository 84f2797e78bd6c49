"""Export to the Hugging Face format and back: transformers' own classes are the reference.

Every mappable variant is written with lmlab.export, loaded with AutoModelForCausalLM / AutoTokenizer (no
remote code), and must compute lmlab's logits, greedy continuations and token ids; reading it back must give
lmlab's GPT unchanged.
"""

from __future__ import annotations

import copy
import json
import logging
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmlab.arguments import check_arguments
from lmlab.checkpoint import load_checkpoint
from lmlab.data.tokenizer import train_tokenizer
from lmlab.decoding import greedy
from lmlab.errors import ArgumentError
from lmlab.export import UnmappableError, export_hf, import_hf
from lmlab.models import GPT
from lmlab.spec import model_spec, tokenizer_spec

VOCAB = 300
TEXTS = ["def main():\n    return 1\n", "import os\nprint(os.path.join('a', 'b'))\n",
         "x = [i * i for i in range(10)]  # squares\n", "class A:\n    pass\n", "naïve café ✓ <|pad|> end\n"]
SMALL = dict(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=4, n_embd=32)
LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu")
VARIANTS = {
    "gpt2": dict(),
    "gpt2_tanh_untied": dict(activation="gelu_tanh", tie_embeddings=False, norm_eps=1e-4),
    "llama_gqa_untied_no_bias": dict(**LLAMA, n_kv_head=2, bias=False, tie_embeddings=False),
    "llama_tied_bias": dict(**LLAMA, n_kv_head=2, bias=True, tie_embeddings=True, rope_theta=500.0, norm_eps=1e-5),
}
# the same function in another form: GPT-2's class with zero biases and keys/values repeated per query head;
# μP's logit and attention multipliers folded into the weights (width 2 x base: neither is 1)
SAME_FUNCTION = {"gpt2_gqa_no_bias": dict(n_kv_head=2, bias=False),
                 "llama_mup_tied": dict(**LLAMA, n_kv_head=2, parametrization="mup", mup_base_width=16),
                 "gpt2_mup_untied": dict(parametrization="mup", mup_base_width=16, tie_embeddings=False)}


@pytest.fixture(autouse=True)
def one_thread():
    """torch on one thread: several times faster than contending for the shared cores."""
    import helpers

    with helpers.one_thread():
        yield


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS * 20, VOCAB)


def perturbed(**options) -> GPT:
    """A GPT whose every weight (biases and norm gains too) is random, so each one must be mapped right."""
    torch.manual_seed(0)
    model = GPT(**{**SMALL, **options}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module", params=[*VARIANTS, *SAME_FUNCTION])
def exported(request, tokenizer, tmp_path_factory):
    """(variant name, lmlab model, folder written by export_hf in float32)."""
    model = perturbed(**{**VARIANTS, **SAME_FUNCTION}[request.param])
    out = tmp_path_factory.mktemp(request.param) / "hf"
    assert export_hf(model, tokenizer, out) == out
    return request.param, model, out


def test_files_load_with_auto_classes_and_no_remote_code(exported):
    name, model, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                      "tokenizer.json", "tokenizer_config.json"]
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False)
    assert type(hf).__name__ == ("LlamaForCausalLM" if name.startswith("llama") else "GPT2LMHeadModel")
    config = json.loads((out / "config.json").read_text())
    tied = model.config.tie_embeddings and "mup" not in name  # μP's logit scale unties the readout
    assert "auto_map" not in config and config["tie_word_embeddings"] == tied
    if name.startswith("llama"):  # read by transformers 5 (rope_parameters) and by older readers (top level)
        assert config["rope_parameters"]["rope_theta"] == config["rope_theta"] == model.config.rope_theta
        assert config["num_key_value_heads"] == model.config.n_kv_head
        assert config["attention_bias"] == config["mlp_bias"] == model.config.bias


def test_float32_logits_match_within_1e_4(exported):
    _, model, out = exported
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, VOCAB, (3, SMALL["block_size"]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf(ids).logits
    assert ours.abs().max() > 1.0  # a model whose logits are not all near zero
    assert (ours - theirs).abs().max().item() < 1e-4


def test_greedy_continuations_are_identical(exported, tokenizer):
    _, model, out = exported
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    for text in TEXTS[:3]:
        prompt = torch.tensor([tokenizer.encode(text)[:8]])
        ours = greedy(model, prompt, max_new_tokens=16, eos_token_id=tokenizer.eos_token_id)[0].tolist()
        theirs = hf.generate(prompt, max_new_tokens=16, do_sample=False)[0].tolist()
        assert until_eos(ours, tokenizer.eos_token_id) == until_eos(theirs, tokenizer.eos_token_id)


def until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos, 8) + 1] if eos in ids[8:] else ids


def test_tokenizer_gives_identical_ids_and_special_tokens(exported, tokenizer):
    _, _, out = exported
    loaded = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    for text in [*TEXTS, "<|endoftext|>def f(): pass<|endoftext|>", ""]:
        assert loaded.encode(text) == tokenizer.encode(text)
        assert loaded.decode(loaded.encode(text)) == text
    for name in ("bos", "eos", "pad"):
        assert getattr(loaded, f"{name}_token_id") == getattr(tokenizer, f"{name}_token_id")
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == generation["bos_token_id"] == tokenizer.eos_token_id
    assert generation["pad_token_id"] == tokenizer.pad_token_id != tokenizer.eos_token_id


def test_export_then_import_is_the_identity(exported, tokenizer):
    name, model, out = exported
    back, loaded_tokenizer, _ = import_hf(out)
    ids = torch.randint(0, VOCAB, (2, SMALL["block_size"]), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = model(ids).logits, back(ids).logits
    assert loaded_tokenizer.encode(TEXTS[1]) == tokenizer.encode(TEXTS[1])
    if name in SAME_FUNCTION:  # the standard form: GPT-2's zero biases and repeated heads, μP's folded scales
        assert (ours - theirs).abs().max().item() < 1e-5
        assert back.config.parametrization == "standard"
        if "gpt2" in name:
            assert (back.config.bias, back.config.n_kv_head) == (True, model.config.n_head)
        return
    assert torch.equal(theirs, ours)
    assert back.config == model.config
    theirs = back.state_dict()
    assert all(torch.equal(tensor, theirs[key]) for key, tensor in model.state_dict().items())
    assert (back.lm_head.weight is back.wte.weight) == model.config.tie_embeddings


def test_import_reads_sharded_and_pytorch_bin_weights_as_transformers_writes_them(exported, tmp_path):
    name, model, out = exported
    hf = AutoModelForCausalLM.from_pretrained(out)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((out / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").rename(tmp_path / "bin" / "pytorch_model.bin")
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(5))
    for folder in (tmp_path / "sharded", tmp_path / "bin"):
        back, _, _ = import_hf(folder)
        with torch.no_grad():
            ours, theirs = model(ids).logits, back(ids).logits
        assert torch.equal(theirs, ours) if "mup" not in name else (theirs - ours).abs().max() < 1e-5


@pytest.mark.parametrize("family, config", [
    ("gpt2", dict(activation_function="gelu_new", n_embd=32, n_layer=2, n_head=4, n_positions=32)),
    ("llama", dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=1, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=32)),
    ("llama", dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                   tie_word_embeddings=True, attention_bias=True, mlp_bias=True, max_position_embeddings=32)),
])
def test_models_transformers_made_import_with_the_same_logits(family, config, tmp_path):
    """Folders lmlab did not write (transformers' own defaults: gelu_new, eps 1e-5, odd MLP widths)."""
    from transformers import AutoConfig

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, vocab_size=VOCAB, bos_token_id=0,
                                                               eos_token_id=0, **config)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    model, tokenizer, _ = import_hf(tmp_path)
    assert tokenizer is None  # the folder has no tokenizer files
    ids = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() < 1e-4


def test_models_run_inside_lmlab_export_with_their_own_class(tokenizer, tmp_path):
    from lmlab.models.hf import HFCausalLM

    torch.manual_seed(0)
    model = HFCausalLM.from_config("llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32).eval()
    export_hf(model, tokenizer, tmp_path / "hf", dtype="float16")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert loaded.dtype == torch.float16 and next(model.parameters()).dtype == torch.float32  # a copy was cast
    ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.allclose(loaded.float()(ids).logits, model(ids).logits, atol=1e-2)
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").encode(TEXTS[0]) == tokenizer.encode(TEXTS[0])


def test_bfloat16_export_is_within_rounding_and_keeps_the_top_token(tokenizer, tmp_path):
    """bf16 keeps 8 significant bits: unit roundoff u = 2^-8. Weights, then each layer's normalised input,
    attention and MLP outputs are rounded, about 3 roundings per layer plus 2 for embedding and head, and to
    first order their relative errors add: |logit error| <= (3 n_layer + 2) u max|logit|. The top token must
    stay the same on >= 99% of positions of a trained model (whose top token stands out, as in real use)."""
    u = 2.0**-8
    for options in (VARIANTS["gpt2"], VARIANTS["llama_gqa_untied_no_bias"]):
        model, batches = trained(perturbed(**options))
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        export_hf(model, tokenizer, out, dtype="bfloat16")
        hf = AutoModelForCausalLM.from_pretrained(out).eval()
        assert hf.dtype == torch.bfloat16
        with torch.no_grad():
            ours, theirs = model(batches).logits, hf(batches).logits.float()
        bound = (3 * model.config.n_layer + 2) * u * ours.abs().max()
        assert (ours - theirs).abs().max() <= bound
        assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() >= 0.99


def trained(model: GPT, steps: int = 100) -> tuple[GPT, torch.Tensor]:
    """The model trained on sequences where each token fixes the next (a random permutation), and fresh ones."""
    generator = torch.Generator().manual_seed(3)
    successor = torch.randperm(VOCAB, generator=generator)

    def sequences(n: int) -> torch.Tensor:
        ids = [torch.randint(0, VOCAB, (n,), generator=generator)]
        for _ in range(SMALL["block_size"]):
            ids.append(successor[ids[-1]])
        return torch.stack(ids, 1)

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    model.train()
    for _ in range(steps):
        batch = sequences(16)
        loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1, loss.item()
    return model.eval(), sequences(8)[:, :-1]


@pytest.mark.parametrize("options, named", [
    (dict(norm="rmsnorm"), "norm='rmsnorm'"),
    (dict(mlp="swiglu"), "mlp='swiglu'"),
    (dict(position="rope"), "norm='layernorm', mlp='standard'"),
    (dict(position="rope", norm="rmsnorm"), "mlp='standard'"),
])
def test_unmappable_models_are_refused_naming_the_options(options, named, tokenizer, tmp_path):
    with pytest.raises(UnmappableError, match=f"position='{options.get('position', 'learned')}', {named}") as e:
        export_hf(GPT(**SMALL, **options), tokenizer, tmp_path / "out")
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_quantized_models_are_refused_with_the_reason(tokenizer, tmp_path):
    from lmlab.quantization import quantize

    with pytest.raises(UnmappableError, match="quantized.*transformers reads quantized weights only"):
        export_hf(quantize(copy.deepcopy(perturbed()), "int8"), tokenizer, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_writing_leaves_no_folder(tokenizer, tmp_path):
    class FailingTokenizer:
        bos_token_id = eos_token_id = 0
        pad_token_id = 1

        def save_pretrained(self, folder):
            (folder / "tokenizer.json").write_text("{")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        export_hf(perturbed(), FailingTokenizer(), tmp_path / "new" / "out")
    assert list(tmp_path.iterdir()) == []  # neither the folder, its hidden staging sibling, nor the parent made


@pytest.mark.parametrize("field, value, named", [
    ("rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}, "rope_scaling"),
    ("partial_rotary_factor", 0.5, "partial_rotary_factor=0.5"),
    ("head_dim", 16, "head_dim=16"),
    ("hidden_act", "gelu", "hidden_act='gelu'"),
    ("mlp_bias", True, "attention_bias=False, mlp_bias=True"),
    ("intermediate_size", 300, "intermediate_size=300"),
    ("model_type", "mistral", "model_type='mistral'"),
])
def test_hugging_face_configs_lmlab_cannot_compute_are_refused(field, value, named, tokenizer, tmp_path):
    out = tmp_path / "hf"
    export_hf(perturbed(**VARIANTS["llama_gqa_untied_no_bias"]), tokenizer, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(UnmappableError, match=f"config.json: {named}") as e:
        import_hf(out)
    assert "\n" not in str(e.value)


def test_norm_eps_is_carried_because_it_changes_the_logits(tokenizer, tmp_path):
    """Llama 2/3 use rms_norm_eps=1e-5, lmlab's RMSNorm 1e-6: the difference is far above the 1e-4 tolerance."""
    model = perturbed(**VARIANTS["llama_tied_bias"])  # norm_eps=1e-5
    other = copy.deepcopy(model)
    for module in other.modules():
        if isinstance(module, torch.nn.RMSNorm):
            module.eps = 1e-6
    ids = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (model(ids).logits - other(ids).logits).abs().max() > 1e-3


def test_init_from_takes_the_folders_architecture_and_weights(exported, caplog):
    name, model, out = exported
    if name in SAME_FUNCTION:
        return
    with caplog.at_level(logging.WARNING, logger="lmlab.models.pretrained"):
        fresh = GPT(init_from=str(out), vocab_size=4096, n_layer=7, dropout=0.25)
    assert "n_layer=2 (not 7)" in caplog.text and "vocab_size=300 (not 4096)" in caplog.text
    assert fresh.config.dropout == 0.25 and fresh.config.n_layer == 2
    assert all(torch.equal(t, fresh.state_dict()[k]) for k, t in model.state_dict().items())
    assert "init_from" not in model_spec(fresh)["config"]  # a checkpoint rebuilds without the folder
    GPT(**model_spec(fresh)["config"])


def test_init_from_is_checked_before_anything_is_built(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for folder, named in ((tmp_path, "model_type='bert'"), (tmp_path / "missing", "no config.json")):
        with pytest.raises(ArgumentError, match=f"init_from={folder}: .*{named}"):
            check_arguments(GPT, {"init_from": str(folder), "n_layer": 2})


def test_load_checkpoint_and_generate_read_a_hugging_face_folder(exported, tokenizer, generate_cfg):
    from lmlab.cli.generate import generate

    name, model, out = exported
    loaded, loaded_tokenizer, info = load_checkpoint(out)
    assert isinstance(loaded, GPT) and info["hf_config"]["vocab_size"] == VOCAB
    (result,) = generate(generate_cfg(f"ckpt={out}", "prompt=def main(", "decoding=greedy", "max_new_tokens=4"))
    assert result.name == "greedy" and len(result.completions[0]) <= 4


def test_data_module_encodes_with_the_folders_tokenizer(exported, tokenizer, corpus_dir, cache_dir):
    import helpers

    from lmlab.data import LMDataModule

    _, _, out = exported
    datamodule = helpers.make_dm(LMDataModule, corpus_dir, cache_dir, block_size=16, batch_size=2,
                                 tokenizer_from=str(out))
    datamodule.check_inputs()
    datamodule.prepare_data()
    datamodule.setup()
    assert tokenizer_spec(datamodule.load_tokenizer())["json"] == tokenizer_spec(tokenizer)["json"]
    block = datamodule.val_blocks[0].tolist()
    assert max(block) < VOCAB and tokenizer.encode(tokenizer.decode(block[:8])) == block[:8]


def test_lm_eval_perplexity_agrees_with_lmlabs_once_units_are_converted(tokenizer, tmp_path):
    """lm-eval (the exported model, --model hf, a local task) and lmlab's GPT score the same documents, some
    longer than the context (rolling windows): byte and word perplexity agree, and so does the per-token
    perplexity lmlab logs, byte_perplexity ** (bytes / tokens)."""
    from lmlab.export.harness import TASK_NAME, rolling_nll, run_lm_eval, write_task

    model = perturbed(**VARIANTS["llama_gqa_untied_no_bias"])
    documents = [*TEXTS, "".join(TEXTS) * 2]  # the last is ~4 contexts long
    assert len(tokenizer.encode(documents[-1])) > 3 * SMALL["block_size"]
    export_hf(model, tokenizer, tmp_path / "hf")
    results = run_lm_eval(tmp_path / "hf", [TASK_NAME], write_task(tmp_path / "tasks", documents), batch_size=4)
    theirs, ours = results[TASK_NAME], rolling_nll(model, tokenizer, documents)
    assert theirs["byte_perplexity,none"] == pytest.approx(ours.perplexity("bytes"), rel=1e-5)
    assert theirs["word_perplexity,none"] == pytest.approx(ours.perplexity("words"), rel=1e-5)
    assert theirs["bits_per_byte,none"] == pytest.approx(ours.nll / ours.bytes / math.log(2), rel=1e-5)
    token_ppl = theirs["byte_perplexity,none"] ** (ours.bytes / ours.tokens)
    assert token_ppl == pytest.approx(ours.perplexity("tokens"), rel=1e-5)

