"""Weight-only quantization: formats, layers, model conversion, checkpoints, decoding, command lines.

References: a NumPy transcription of both formats (always), and torchao's int8 weight-only layer
where torchao is installed (`pip install --no-deps torchao`; see the README's Quantization section).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import column, read_metrics
from safetensors.torch import save_file

from lmlab.checkpoint import load_checkpoint
from lmlab.cli import CONF_DIR
from lmlab.cli.generate import generate
from lmlab.cli.quantize import main as quantize_main
from lmlab.cli.train import train
from lmlab.compare import token_agreement
from lmlab.decoding import beam_search, greedy, sample, speculative
from lmlab.errors import CheckpointError, InputError
from lmlab.models import GPT
from lmlab.models.hf import HFCausalLM
from lmlab.quantization import (
    QuantizedEmbedding,
    QuantizedLinear,
    TiedEmbedding,
    is_quantized,
    load_quantized,
    quantize,
    save_quantized,
)
from lmlab.quantization.int4 import dequantize_int4, quantize_int4, unpack_int4
from lmlab.quantization.int8 import dequantize_int8, packed_kernel_applies, quantize_int8

ROOT = CONF_DIR.rsplit("/", 1)[0]


def awkward_weights(out_features: int = 24, in_features: int = 128, seed: int = 0) -> torch.Tensor:
    """Random weights with a row of zeros, a row with one huge outlier and a constant row."""
    w = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed)) * 0.02
    w[3] = 0.0
    w[5, 17] = 80.0
    w[7] = 0.3
    return w


@pytest.fixture(scope="module")
def trained(trained_run):
    """The shared trained run's float model (1 layer, 32 wide, vocab 384) and tokenizer."""
    model, tokenizer, _ = load_checkpoint(trained_run)
    return model, tokenizer


def per_element_scale(scale: torch.Tensor, in_features: int) -> torch.Tensor:
    """A per-row [out] or per-group [out, groups] scale broadcast to every weight [out, in]."""
    scale = scale.float()
    if scale.dim() == 1:
        return scale[:, None].expand(-1, in_features)
    return scale.repeat_interleave(in_features // scale.shape[1], dim=1)


# --- formats: the round-trip bound ------------------------------------------------------------------

@pytest.mark.parametrize("source", ["awkward", "trained"])
def test_int8_round_trip_within_half_a_scale(source, trained):
    weights = [awkward_weights()] if source == "awkward" else [
        m.weight for m in trained[0].modules() if isinstance(m, nn.Linear)]
    for w in weights:
        q, scale = quantize_int8(w)
        assert q.dtype == torch.int8 and scale.dtype == torch.float32
        error = (w.float() - dequantize_int8(q, scale)).abs()
        assert (error <= per_element_scale(scale, w.shape[1]) / 2 * (1 + 1e-6)).all()
    if source == "awkward":
        assert (dequantize_int8(q, scale)[3] == 0).all()  # a row of zeros stays exactly zero
        assert dequantize_int8(q, scale)[5, 17] == pytest.approx(80.0, rel=1e-6)  # the outlier sets its row's scale


@pytest.mark.parametrize("source", ["awkward", "trained"])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_round_trip_within_half_a_scale(source, group_size, symmetric, trained):
    weights = [awkward_weights()] if source == "awkward" else [
        m.weight for m in trained[0].modules() if isinstance(m, nn.Linear) and m.in_features % group_size == 0]
    for w in weights:
        packed, scale, offset = quantize_int4(w, group_size, symmetric)
        assert packed.dtype == torch.uint8 and packed.shape == (w.shape[0], w.shape[1] // 2)
        assert scale.dtype == torch.bfloat16 and (offset is None) == symmetric
        error = (w.float() - dequantize_int4(packed, scale, offset)).abs()
        assert (error <= per_element_scale(scale, w.shape[1]) / 2 * (1 + 1e-5)).all()
    if source == "awkward":  # the outlier's group alone pays for it: other groups keep fine scales
        group = 17 // group_size
        assert scale[5, group] > 1.0 and (scale[5, :group].float() < 0.01).all()
        assert (dequantize_int4(packed, scale, offset)[3] == 0).all()


# --- the quantized Linear computes x @ dequantized.T -----------------------------------------------

@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("in_features", [64, 36])  # 36: not a multiple of 8 (the packed bf16 kernel is unsafe)
def test_quantized_linear_equals_matmul_with_dequantized_weight(mode, dtype, bias, in_features):
    if mode == "int4" and in_features == 36:
        in_features = 48
    torch.manual_seed(0)
    linear = nn.Linear(in_features, 40, bias=bias)
    exact = "float32" if mode == "int8" and dtype == torch.float32 else None  # the default rounds to bfloat16
    layer = quantize(nn.Sequential(linear), mode, group_size=16 if mode == "int4" else None, matmul_dtype=exact)[0]
    assert isinstance(layer, QuantizedLinear)
    layer = layer.to(dtype)
    weight = layer.dequantize(dtype)
    for x in (torch.randn(5, in_features, dtype=dtype), torch.randn(2, 3, in_features, dtype=dtype)):
        expected = x @ weight.T + (layer.bias if bias else 0)
        got = layer(x)
        assert got.dtype == dtype and got.shape == expected.shape
        if dtype == torch.float32:
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        else:  # bfloat16 rounds each output to 8 bits of mantissa; allow a few of those steps
            scale = expected.abs().max().item()
            torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=2e-2 * scale)
    if mode == "int8":  # which int8 kernel ran
        assert packed_kernel_applies(x, in_features) == (dtype == torch.bfloat16 and in_features % 8 == 0)


@pytest.mark.parametrize("matmul_dtype", ["bfloat16", None])  # None: the fastest for the device, bf16 on CPU
def test_int8_matmul_dtype_bfloat16_rounds_the_inputs_and_returns_the_input_dtype(matmul_dtype):
    torch.manual_seed(0)
    layer = quantize(nn.Sequential(nn.Linear(64, 40)), "int8", matmul_dtype=matmul_dtype)[0]
    x = torch.randn(2, 3, 64)
    got = layer(x)
    assert got.dtype == torch.float32 and packed_kernel_applies(x.bfloat16(), 64)
    expected = x @ layer.dequantize().T + layer.bias
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())
    assert not torch.allclose(got, expected, rtol=1e-6, atol=1e-7)  # it did compute in bfloat16
    bf16 = x.bfloat16() @ layer.dequantize(torch.bfloat16).T
    torch.testing.assert_close(got - layer.bias, bf16.float(), rtol=2e-2, atol=2e-2 * bf16.abs().max().item())


def test_the_default_int8_path_is_chosen_per_device_and_dtype_and_logged(caplog):
    from lmlab.quantization.int8 import _logged, fastest_matmul_dtype

    _logged.clear()
    with caplog.at_level(logging.INFO, logger="lmlab.quantization.int8"):
        assert fastest_matmul_dtype(torch.randn(1, 64), 64) == torch.bfloat16  # the packed kernel, on CPU
        assert fastest_matmul_dtype(torch.randn(1, 36), 36) == torch.float32  # 36 inputs: the kernel is unsafe
        assert fastest_matmul_dtype(torch.randn(1, 64, dtype=torch.bfloat16), 64) == torch.bfloat16
        assert fastest_matmul_dtype(torch.randn(1, 64), 64) == torch.bfloat16  # logged once
        if torch.cuda.is_available():
            assert fastest_matmul_dtype(torch.randn(1, 64, device="cuda"), 64) == torch.float32
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 + torch.cuda.is_available()
    assert "float32 activations on cpu run in bfloat16 through torch._weight_int8pack_mm" in lines[0]
    assert "in their own dtype, the weight dequantized" in lines[1]


# --- independent references ------------------------------------------------------------------------

def numpy_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    return np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8), scale


def test_int8_matches_a_numpy_transcription():
    w = awkward_weights().numpy()
    x = np.random.default_rng(0).standard_normal((6, w.shape[1])).astype(np.float32)
    q_ref, scale_ref = numpy_int8(w)
    q, scale = quantize_int8(torch.from_numpy(w))
    np.testing.assert_array_equal(q.numpy(), q_ref)
    np.testing.assert_array_equal(scale.numpy(), scale_ref)
    layer = quantize(nn.Sequential(nn.Linear(w.shape[1], w.shape[0])), "int8", matmul_dtype="float32")[0]
    layer.set_weight(torch.from_numpy(w))
    expected = x.astype(np.float64) @ (q_ref.astype(np.float64) * scale_ref[:, None]).T + layer.bias.detach().numpy()
    np.testing.assert_allclose(layer(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_matches_a_numpy_transcription(symmetric):
    """Given lmlab's stored scales and offsets, NumPy recomputes every nibble, the packing and the weight."""
    w = awkward_weights().numpy()
    group = 32
    packed, scale, offset = quantize_int4(torch.from_numpy(w), group, symmetric)
    s = scale.float().numpy().repeat(group, axis=1)
    groups = w.reshape(w.shape[0], -1, group)
    if symmetric:
        q_ref = np.clip(np.round(w / s), -8, 7) + 8
        assert np.all(scale.float().numpy() >= np.abs(groups).max(-1) / 7)  # rounded up: nothing clips
        w_ref = (q_ref - 8) * s
    else:
        o = offset.float().numpy().repeat(group, axis=1)
        q_ref = np.clip(np.round((w - o) / s), 0, 15)
        assert np.all(offset.float().numpy() <= groups.min(-1))  # rounded down
        assert np.all(offset.float().numpy() + 15 * scale.float().numpy() >= groups.max(-1) * (1 - 1e-6))
        w_ref = q_ref * s + o
    q_ref = q_ref.astype(np.uint8)
    np.testing.assert_array_equal(unpack_int4(packed).numpy(), q_ref)
    np.testing.assert_array_equal(packed.numpy(), q_ref[:, 0::2] | (q_ref[:, 1::2] << 4))
    np.testing.assert_allclose(dequantize_int4(packed, scale, offset).numpy(), w_ref, rtol=1e-6, atol=1e-7)


def test_int8_agrees_with_torchao_within_one_quantization_step():
    torchao = pytest.importorskip("torchao.quantization")
    torch.manual_seed(0)
    linear = nn.Linear(128, 96)
    with torch.no_grad():
        linear.weight.copy_(awkward_weights(96, 128))
    reference = copy.deepcopy(nn.Sequential(linear))
    torchao.quantize_(reference, torchao.Int8WeightOnlyConfig())
    ours = quantize(nn.Sequential(linear), "int8")[0]
    step = ours.scale[:, None]  # lmlab: max|w| / 127; torchao: max|w| / 127.5: each within half its step
    ao_weight = reference[0].weight.dequantize()
    assert ((ours.dequantize() - ao_weight).abs() <= step * (1 + 1e-5)).all()
    x = torch.randn(8, 128)
    bound = x.abs() @ step.expand(-1, 128).T  # |x @ (W1 - W2).T| <= |x| @ step.T
    with torch.no_grad():
        assert ((ours(x) - reference(x)).abs() <= bound * (1 + 1e-4) + 1e-5).all()


# --- model conversion ------------------------------------------------------------------------------

def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(**{"vocab_size": 96, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, **overrides}).eval()


def test_embeddings_and_head_stay_float_by_default_and_tied_weights_stay_one_tensor():
    model = quantize(tiny_gpt(), "int8")
    assert isinstance(model.wte, nn.Embedding) and isinstance(model.lm_head, nn.Linear)
    assert model.lm_head.weight is model.wte.weight
    assert all(isinstance(b.attn.qkv, QuantizedLinear) and isinstance(b.mlp.down, QuantizedLinear)
               for b in model.blocks)
    everything = quantize(tiny_gpt(), "int4", group_size=16, embeddings=True)
    assert isinstance(everything.wte, TiedEmbedding) and everything.wte.head is everything.lm_head
    assert isinstance(everything.wpe, QuantizedEmbedding)
    ids = torch.tensor([[5, 7, 9]])
    torch.testing.assert_close(everything.wte(ids), everything.lm_head.dequantize()[ids])
    assert not any(k.startswith("wte.") for k in everything.state_dict())  # stored once, under lm_head
    kept = quantize(tiny_gpt(), "int8", skip=["blocks.1.*"])
    assert isinstance(kept.blocks[0].mlp.up, QuantizedLinear) and isinstance(kept.blocks[1].mlp.up, nn.Linear)


def test_dtype_casts_keep_the_format_and_change_the_compute_dtype():
    model = quantize(tiny_gpt(), "int8", embeddings=True).to(torch.bfloat16)
    assert model.lm_head.qweight.dtype == torch.int8 and model.lm_head.scale.dtype == torch.float32
    assert model.wte(torch.tensor([[1, 2]])).dtype == torch.bfloat16
    assert model(torch.tensor([[1, 2, 3]])).logits.dtype == torch.bfloat16
    int4 = quantize(tiny_gpt(), "int4", group_size=16).float()
    assert int4.blocks[0].attn.qkv.scale.dtype == torch.bfloat16


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_hugging_face_models_quantize_wrapped_or_bare(architecture, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = ({"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64} if architecture == "gpt2" else
             {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 1, "max_position_embeddings": 64})
    torch.manual_seed(0)
    config = AutoConfig.for_model(architecture, vocab_size=96, bos_token_id=0, eos_token_id=1, **sizes)
    bare = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(2, 96, (2, 6))
    reference = bare(ids).logits
    for model in (HFCausalLM(copy.deepcopy(bare)), copy.deepcopy(bare)):
        quantized = quantize(model, "int8", embeddings=True)
        assert quantized is model and is_quantized(quantized)
        wrapped = quantized if isinstance(quantized, HFCausalLM) else HFCausalLM(quantized)
        assert (wrapped(ids).logits - reference).abs().max() < 0.05 * reference.abs().max()
        assert greedy(quantized, ids, 3).shape == (2, 9)
    loaded, _, _ = load_checkpoint(save_quantized(quantized, tmp_path / "hf.safetensors"))
    assert torch.equal(loaded(ids).logits, HFCausalLM(quantized)(ids).logits)
    gpt2_layers = [m for m in quantize(copy.deepcopy(bare), "int4", group_size=16).modules()
                   if isinstance(m, QuantizedLinear)]
    assert len(gpt2_layers) == (4 if architecture == "gpt2" else 7) * 2  # Conv1D included; LM head kept


# --- checkpoints -----------------------------------------------------------------------------------

@pytest.fixture
def no_pickle(monkeypatch):
    """Any unpickling during the test fails it."""
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling while loading a quantized checkpoint")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize("settings", [{"mode": "int8", "matmul_dtype": "bfloat16"}, {"mode": "int4", "group_size": 32},
                                      {"mode": "int4", "group_size": 16, "symmetric": True, "embeddings": True},
                                      {"mode": "int8", "embeddings": True}])
def test_checkpoint_round_trip_is_bit_exact_and_never_unpickles(settings, trained, tmp_path, no_pickle):
    model, tokenizer = trained
    quantized = quantize(copy.deepcopy(model), **settings)
    path = save_quantized(quantized, tmp_path / "q.safetensors", tokenizer)
    loaded, loaded_tokenizer, meta = load_checkpoint(path)  # dispatched on the .safetensors suffix
    before, after = quantized.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key, tensor in before.items():
        assert after[key].dtype == tensor.dtype and torch.equal(after[key], tensor), key
    ids = torch.tensor([tokenizer.encode("def main(")])
    assert torch.equal(loaded(ids).logits, quantized(ids).logits)
    assert loaded_tokenizer.encode("import os") == tokenizer.encode("import os")
    assert meta["format_version"] == "1" and meta["quantization"] == {**quantized.quantization.to_dict()}
    assert settings.items() <= meta["quantization"].items()


def test_unusable_safetensors_files_are_checkpoint_errors(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not an lmlab quantized checkpoint"):
        load_quantized(foreign)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_quantized(broken)
    with pytest.raises(CheckpointError, match="missing.safetensors: does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


# --- decoding --------------------------------------------------------------------------------------

def test_every_decoding_strategy_runs_on_quantized_models(trained):
    model, tokenizer = trained
    target = quantize(copy.deepcopy(model), "int8")
    draft = quantize(copy.deepcopy(model), "int4", group_size=16, embeddings=True)
    ids = torch.tensor([tokenizer.encode("def main(self):")])
    padded = torch.cat([torch.full((1, 2), tokenizer.pad_token_id), ids[:, :-2]], dim=1)
    batch = torch.cat([ids, padded])
    mask = (torch.arange(ids.shape[1]) >= torch.tensor([[0], [2]])).long()
    reference = greedy(target, ids, 12)
    assert greedy(target, batch, 12, attention_mask=mask).shape == (2, ids.shape[1] + 12)
    assert sample(target, batch, 12, attention_mask=mask, generator=torch.Generator().manual_seed(0)).shape[1] > 0
    sequences, scores = beam_search(target, batch, 12, num_beams=3, attention_mask=mask)
    assert sequences.shape[0] == 2 and torch.isfinite(scores).all()
    for drafter in (draft, model, "prompt_lookup"):  # quantized target with a quantized, float or no draft model
        out, stats = speculative(target, drafter, ids, 12)
        assert torch.equal(out, reference), drafter if isinstance(drafter, str) else type(drafter)
    out, _ = speculative(model, draft, ids, 12)  # float target, quantized draft: still the float greedy
    assert torch.equal(out, greedy(model, ids, 12))
    out, _ = speculative(target, draft, ids, 12, temperature=0.8, generator=torch.Generator().manual_seed(0))
    assert out.shape[1] <= ids.shape[1] + 12


@pytest.mark.parametrize("settings", [{"mode": "int8"}, {"mode": "int8", "matmul_dtype": "bfloat16"},
                                      {"mode": "int4", "group_size": 16}], ids=["int8", "int8-bf16", "int4"])
def test_compiled_decoding_of_a_quantized_model_equals_eager(settings):
    """Under torch.compile a quantized matmul is one opaque op: Inductor cannot compile torch's packed int8
    kernel (int8-bf16 failed with a LoweringException before) and its own lowering of the rest was slower."""
    model = quantize(tiny_gpt(), **settings)
    ids = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy(model, ids, 6, compile=True), greedy(model, ids, 6))


def test_token_agreement():
    assert token_agreement([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 5]]) == 1.0
    assert token_agreement([[1, 2, 3, 4]], [[1, 9, 3]]) == 0.5  # the missing last token counts as different


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error", [
    ({"mode": "int3"}, r"^mode='int3': must be one of 'int8', 'int4'$"),
    ({"mode": "int4", "group_size": 48}, r"^group_size=48: does not divide in_features=32 of blocks.0.attn.qkv"),
    ({"mode": "int4", "group_size": 0}, r"^group_size=0: must be null or an integer >= 1$"),
    ({"mode": "int8", "group_size": 64}, r"^group_size=64: applies to int4 only"),
    ({"mode": "int8", "skip": ["blcks.*"]}, r"^skip=\['blcks.\*'\]: the pattern 'blcks.\*' matches no module"),
    ({"mode": "int8", "skip": ["*"]}, r"^skip=\['\*'\]: leaves nothing to quantize"),
    ({"mode": "int8", "embeddings": True, "skip": ["wte"]}, r"wte and lm_head share one weight"),
    ({"mode": "int4", "matmul_dtype": "bfloat16"}, r"^matmul_dtype='bfloat16': applies to int8 only \(mode='int4'\)"),
    ({"mode": "int8", "matmul_dtype": "float8"},
     r"^matmul_dtype='float8': must be null or one of 'bfloat16', 'float32'$"),
])
def test_bad_settings_fail_before_any_layer_changes(kwargs, error):
    model = tiny_gpt()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match=error):
        quantize(model, **kwargs)
    assert not is_quantized(model) and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_non_finite_weights_and_quantizing_twice_are_refused():
    model = tiny_gpt()
    with torch.no_grad():
        model.blocks[1].mlp.down.weight[0, 0] = float("nan")
    with pytest.raises(InputError, match=r"blocks.1.mlp.down.weight has non-finite values"):
        quantize(model, "int8")
    assert not is_quantized(model)
    twice = quantize(tiny_gpt(), "int8")
    with pytest.raises(InputError, match=r"already quantized \(int8\)"):
        quantize(twice, "int4")


@pytest.mark.parametrize("overrides,error", [
    (["quantize=int9"], "quantize='int9': must be null or one of 'int8', 'int4'"),
    (["quantize_group_size=32"], "quantize_group_size=32: is set but quantize=null"),
    (["quantize=int8", "quantize_group_size=32"], "quantize_group_size=32: applies to int4 only"),
    (["quantize=int4", "quantize_group_size=48"], "quantize_group_size=48: does not divide"),
])
def test_generate_py_quantize_misuse_is_named(overrides, error, trained_run, generate_cfg):
    with pytest.raises(InputError, match=error):
        generate(generate_cfg(f"ckpt={trained_run}", "prompt=x", "max_new_tokens=4", *overrides))


# --- command lines ---------------------------------------------------------------------------------

def test_lmlab_quantize_writes_a_checkpoint_generate_loads(trained_run, tmp_path, capsys, generate_cfg):
    out = tmp_path / "int8.safetensors"
    figures = quantize_main([str(trained_run), "--mode", "int8", "--out", str(out), "--prompts", "4",
                             "--new-tokens", "4", "--val-batches", "2", "--repeats", "1"])
    printed = capsys.readouterr().out
    for row in ("weights MiB", "val perplexity", "greedy agreement", "tokens/s batch 1", "tokens/s batch 8"):
        assert row in printed
    assert figures["int8"]["perplexity"] == pytest.approx(figures["float32"]["perplexity"], rel=0.05)
    (result,) = generate(generate_cfg(f"ckpt={out}", "prompt=def main(", "decoding=greedy", "max_new_tokens=4"))
    loaded, tokenizer, _ = load_checkpoint(out)
    ids = torch.tensor([tokenizer.encode("def main(")])
    expected = greedy(loaded, ids, 4)[0, ids.shape[1]:].tolist()
    assert result.completions[0] == expected[: len(result.completions[0])]


@pytest.mark.parametrize("args,error", [
    (["--mode", "int8", "--out", "x.pt"], r"--out=\S*x.pt must end in .safetensors"),
    (["--mode", "int8", "--group-size", "32", "--out", "x.safetensors"], r"--group-size=32: applies to int4 only"),
    (["--mode", "fp8", "--out", "x.safetensors"], r"--mode='fp8': must be one of 'int8', 'int4'"),
    (["--mode", "int8", "--skip", "nothing", "--out", "x.safetensors"],
     r"--skip=\['nothing'\]: the pattern 'nothing' matches no"),
])
def test_lmlab_quantize_misuse_is_one_line(args, error, trained_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quantize_main([str(trained_run), *args[:-1], str(tmp_path / args[-1])])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert re.search(error, err) and "\n" not in err, err


def test_lmlab_quantize_refuses_a_quantized_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        quantize_main([str(tmp_path / "m.safetensors"), "--mode", "int4", "--out", str(tmp_path / "o.safetensors")])
    assert "is a quantized checkpoint already" in capsys.readouterr().err


def test_training_logs_quantized_decode_metrics_next_to_the_float_ones(make_cfg):
    cfg = make_cfg("callbacks.decoding.quantize=int4", "callbacks.decoding.quantize_group_size=16",
                   "decoding=greedy", "trainer.max_steps=3", "samples.num_prompts=0")
    train(cfg)
    metrics = read_metrics(cfg.paths.output_dir)
    assert {"decode/greedy/tokens_per_s", "decode/greedy-int4/tokens_per_s", "decode/greedy-int4/perplexity",
            "decode/greedy-int4/agreement"} <= set(metrics)
    agreement = column(metrics, "decode/greedy-int4/agreement")
    assert agreement and all(0 <= a <= 1 for a in agreement)


def test_decoding_callback_checks_its_quantize_settings_at_construction():
    from lmlab.callbacks.decoding import DecodingEvaluator

    with pytest.raises(InputError, match=r"^quantize='int2': must be null or one of 'int8', 'int4'$"):
        DecodingEvaluator(functools.partial(greedy), quantize="int2")


def test_generate_py_quantize_int8_through_the_real_command_line(trained_run, tmp_path):
    cmd = [sys.executable, f"{ROOT}/generate.py", f"ckpt={trained_run}", "quantize=int8", "decoding=greedy",
           "prompt=def main(", "max_new_tokens=6"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "def main(" in proc.stdout and "tokens_per_s" in proc.stdout


def test_benchmark_smoke_prints_every_goal(trained_run):
    cmd = [sys.executable, f"{ROOT}/benchmarks/quantize.py", "--run", str(trained_run), "--group-size", "32",
           "--threads", "1", "--cpu-time", "--smoke"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert set(result["goals"]) == {
        "int8_memory_vs_float32", "int8_memory_vs_bfloat16", "int8_perplexity_change", "int8_greedy_agreement",
        "int4_memory_vs_bfloat16", "int4_perplexity_change", "int8_speed_batch1", "int8_speed_batch8",
        "int8_bf16_matmul_speed_batch1", "int8_bf16_matmul_speed_batch8", "int8_bf16_matmul_perplexity_change"}
    int8 = result["models"]["int8"]
    assert 0.25 < int8["layer_bytes_vs_float32"] <= 0.25 + 1 / 32  # 1 byte a weight, 4 per row of >= 32
    assert all(result["models"][m]["tokens_per_s_batch8"] > 0 for m in result["models"])
    assert any("int8pack_mm_us" in k for k in result["int8_kernels"])
