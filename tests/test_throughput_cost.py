"""FLOPs, peak FLOP/s, MFU and cost projections against hand-computed numbers; the throughput
callback in a real run; `lmlab cost` on a composed config."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest
import torch
from helpers import read_metrics
from tiny_lightning import BLOCK, VOCAB, TinyLM, fit_tiny
from torch.utils.flop_counter import FlopCounterMode

from lmlab import cost
from lmlab.callbacks.throughput import ThroughputMonitor
from lmlab.cli import cost as cost_cli
from lmlab.cost import (
    CostProjection,
    lookup_peak_flops,
    measured_matmul_flops,
    mfu,
    model_shape,
    peak_flops_per_device,
    precision_dtype,
    train_flops_per_token,
)
from lmlab.models import GPT
from lmlab.models.hf import HFCausalLM


def gpt_matmul_params_by_hand(V, T, L, d, tied=True, learned_pos=True):
    """Every weight of lmlab's GPT (biases and LayerNorms included), minus lookup tables."""
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    head = V * d  # the LM head (the tied embedding, counted once)
    return L * block + 2 * d + head, L * block + 2 * d + head + (T * d if learned_pos else 0) + (
        0 if tied else V * d
    )


def test_flops_per_token_of_gpt_by_hand():
    V, T, L, d = VOCAB, BLOCK, 2, 32
    model = TinyLM().model
    matmul, total = gpt_matmul_params_by_hand(V, T, L, d)
    shape = model_shape(model)
    assert (shape.n_matmul_params, shape.n_params, shape.n_layer, shape.d_attn) == (matmul, total, L, d)
    for seq_len in (16, 7):  # the actual sequence length, not the context size
        assert train_flops_per_token(shape, seq_len) == 6 * matmul + 12 * L * d * seq_len


def test_untied_gqa_model_counts_head_not_input_table():
    model = GPT(
        vocab_size=50,
        block_size=8,
        n_layer=1,
        n_head=4,
        n_kv_head=1,
        n_embd=16,
        tie_embeddings=False,
        position="rope",
        bias=False,
        norm="rmsnorm",
    )
    shape = model_shape(model)
    total = sum(p.numel() for p in model.parameters())
    assert shape.n_matmul_params == total - 50 * 16  # input table out, LM head in
    assert shape.d_attn == 16  # query heads x head_dim: GQA does not change the attention FLOPs


def test_hf_model_shape_from_config_fields():
    model = HFCausalLM.from_config(
        "llama",
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
    )
    shape = model_shape(model)
    assert (shape.n_layer, shape.d_attn, shape.vocab_size) == (3, 4 * 16, 97)
    assert shape.n_matmul_params == sum(p.numel() for p in model.parameters()) - 97 * 32  # untied


def test_mfu_of_gpt2_124m_matches_the_measured_h200_figure():
    """A nanoGPT-style GPT-2 124M measured at 514k tokens/s on an H200 (bf16, batch 32 x 1024, fused AdamW)
    runs at 45% MFU."""
    with torch.device("meta"):
        model = GPT(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    shape = model_shape(model)
    n_by_hand = gpt_matmul_params_by_hand(50257, 1024, 12, 768)[0]
    assert shape.n_matmul_params == n_by_hand
    flops = train_flops_per_token(shape, 1024)
    assert flops == 6 * n_by_hand + 12 * 12 * 768 * 1024
    peak = lookup_peak_flops("NVIDIA H200", "bf16")
    assert mfu(flops, 514e3, peak) == pytest.approx(0.45, abs=0.01)
    assert mfu(flops, 2 * 514e3, peak, num_devices=2) == pytest.approx(mfu(flops, 514e3, peak))


@pytest.mark.parametrize(
    "name, dtype, peak",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
        ("NVIDIA H200", "bf16", 989e12),
        ("NVIDIA GH200 480GB", "fp16", 989e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H100 NVL", "bf16", 835e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA A100-SXM4-40GB", "tf32", 156e12),
        ("NVIDIA A10G", "bf16", 125e12),
        ("NVIDIA L4", "bf16", 121e12),
        ("NVIDIA L40S", "bf16", 362e12),
        ("NVIDIA GeForce RTX 4090", "bf16", 165.2e12),
        ("Tesla T4", "fp16", 65e12),
        ("Tesla V100-SXM2-16GB", "fp16", 125e12),
    ],
)
def test_peak_flops_table(name, dtype, peak):
    assert lookup_peak_flops(name, dtype) == peak


def test_peak_flops_unknown_or_unsupported_warns_and_override_wins():
    with pytest.warns(UserWarning, match="no tensor-core peak for bf16"):
        assert lookup_peak_flops("Tesla V100-SXM2-16GB", "bf16") is None
    with pytest.warns(UserWarning, match="unknown"):
        assert lookup_peak_flops("Some Future GPU", "bf16") is None
    assert peak_flops_per_device("cpu", torch.float32, override=123.0) == 123.0
    with pytest.raises(ValueError, match="peak_flops"):
        peak_flops_per_device("cpu", torch.float32, override=-1.0)


def test_cpu_peak_is_the_best_rate_of_timed_matmuls(monkeypatch):
    """FLOP/s = 2·n³ FLOPs of an n×n matmul over its measured time. The FLOP count is checked against
    torch's own counter; the time against a clock that advances exactly 1 ms per reading, so every timed
    matmul takes 1 ms and the rate must be 2·n³ / 1 ms."""
    n = 64
    a, b = torch.randn(n, n), torch.randn(n, n)
    with FlopCounterMode(display=False) as counter:
        torch.mm(a, b)
    assert counter.get_total_flops() == 2 * n**3
    ticks = itertools.count()
    monkeypatch.setattr(cost, "time", SimpleNamespace(perf_counter=lambda: next(ticks) * 1e-3))
    unmemoised = measured_matmul_flops.__wrapped__  # the cached value belongs to the real clock
    assert unmemoised(torch.float32, n, 0.01) == pytest.approx(2 * n**3 / 1e-3, rel=1e-9)
    monkeypatch.undo()
    assert unmemoised(torch.float32, n, 0.01) > 0  # and the real clock gives a rate


def test_precision_names():
    assert precision_dtype("bf16-mixed") is torch.bfloat16 and precision_dtype("16-mixed") is torch.float16
    assert precision_dtype("32-true") is torch.float32 and precision_dtype(64) is torch.float64
    with pytest.raises(ValueError, match="^precision='fp8': allowed"):
        precision_dtype("fp8")


def test_cost_projection_equals_the_formula():
    p = CostProjection(
        flops_per_token=8e8,
        n_params=124_000_000,
        tokens_per_step=32 * 1024 * 4,
        max_steps=5000,
        world_size=4,
        tokens_per_s=2e6,
        peak_flops=989e12,
        price_per_device_hour=2.5,
        decode_tokens_per_s=500.0,
    )
    m = p.metrics()
    train_tokens = 32 * 1024 * 4 * 5000
    assert m["cost/train_tokens"] == train_tokens
    assert m["cost/train_flops"] == pytest.approx(8e8 * train_tokens)
    assert m["cost/mfu"] == pytest.approx(8e8 * 2e6 / (989e12 * 4))
    assert m["cost/train_hours"] == pytest.approx(train_tokens / 2e6 / 3600)
    assert m["cost/train_device_hours"] == pytest.approx(4 * train_tokens / 2e6 / 3600)
    assert m["cost/train_cost"] == pytest.approx(2.5 * 4 * train_tokens / 2e6 / 3600)
    assert m["cost/optimal_tokens"] == 20 * 124_000_000
    assert m["cost/optimal_flops"] == pytest.approx(8e8 * 20 * 124e6)
    assert m["cost/optimal_cost"] == pytest.approx(2.5 * 4 * 20 * 124e6 / 2e6 / 3600)
    assert m["cost/decode_cost_per_mtok"] == pytest.approx(2.5 * 1e6 / 500 / 3600)
    unmeasured = CostProjection(flops_per_token=8e8, n_params=10, tokens_per_step=1, max_steps=1).metrics()
    assert not any(k.endswith(("_hours", "_cost", "mfu", "per_mtok")) for k in unmeasured)


def test_throughput_monitor_in_a_real_run(tmp_path):
    peak, price = 1e10, 3.0
    monitor = ThroughputMonitor(
        peak_flops=peak, price_per_device_hour=price, decode_tokens=4, warmup_intervals=1
    )
    trainer, _ = fit_tiny(tmp_path, [monitor], steps=6, log_every_n_steps=2)
    m = read_metrics(tmp_path)
    assert float(trainer.callback_metrics["perf/tokens_per_s"]) == pytest.approx(m["perf/tokens_per_s"][5])
    flops = 6 * gpt_matmul_params_by_hand(VOCAB, BLOCK, 2, 32)[0] + 12 * 2 * 32 * BLOCK
    assert sorted(m["perf/tokens_per_s"]) == [1, 3, 5]
    for step, tps in m["perf/tokens_per_s"].items():
        assert tps * m["perf/step_time"][step] == pytest.approx(8 * BLOCK, rel=1e-6)  # batch 8 x 16 tokens
        assert m["perf/mfu"][step] == pytest.approx(flops * tps / peak, rel=1e-6)
        assert m["perf/peak_mem_gb"][step] > 0
    # logged with the first throughput (step 1): the peak and decode measurements it needs wait until then
    assert m["cost/flops_per_token"][1] == flops
    assert m["cost/train_flops"][1] == flops * 8 * BLOCK * 6
    # after one warm-up interval the projection uses the second measurement (logged at step 3)
    ((cost_step, train_cost),) = m["cost/train_cost"].items()
    assert cost_step == 3
    assert train_cost == pytest.approx(price * 8 * BLOCK * 6 / m["perf/tokens_per_s"][3] / 3600, rel=1e-6)
    assert m["cost/decode_cost_per_mtok"][3] == pytest.approx(
        price * 1e6 / m["cost/decode_tokens_per_s"][3] / 3600
    )
    assert monitor.tokens_seen == 6 * 8 * BLOCK


def test_lmlab_cost_prints_the_numbers_of_its_formula(capsys):
    overrides = [
        "model.n_layer=1",
        "model.n_head=2",
        "model.n_embd=32",
        "model.block_size=64",
        "data.vocab_size=384",
        "data.batch_size=4",
        "data.block_size=16",
        "trainer.max_steps=50",
        "trainer.accelerator=cpu",
        "trainer.accumulate_grad_batches=2",
    ]
    cost_cli.main(["--json", "--price", "2.0", "--measure-steps", "1", "--decode-tokens", "4", *overrides])
    printed = json.loads(capsys.readouterr().out)
    inputs, m = printed["inputs"], printed["metrics"]
    matmul, total = gpt_matmul_params_by_hand(384, 64, 1, 32)
    assert (inputs["n_matmul_params"], inputs["n_params"]) == (matmul, total)
    flops = 6 * matmul + 12 * 1 * 32 * 16
    tokens = 4 * 16 * 2 * 50
    tps, decode = inputs["tokens_per_s_per_device"], inputs["decode_tokens_per_s"]
    assert m["cost/flops_per_token"] == flops
    assert m["cost/train_flops"] == flops * tokens
    assert m["cost/train_device_hours"] == pytest.approx(tokens / tps / 3600, rel=1e-12)
    assert m["cost/train_cost"] == pytest.approx(2.0 * tokens / tps / 3600, rel=1e-12)
    assert m["cost/optimal_cost"] == pytest.approx(2.0 * 20 * total / tps / 3600, rel=1e-12)
    assert m["cost/decode_cost_per_mtok"] == pytest.approx(2.0 * 1e6 / decode / 3600, rel=1e-12)
    assert m["cost/mfu"] == pytest.approx(flops * tps / m["cost/peak_flops"], rel=1e-12)


def test_throughput_monitor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="^price_per_device_hour=-1: must be null or a number >= 0$"):
        ThroughputMonitor(price_per_device_hour=-1)
    with pytest.raises(ValueError, match="^peak_flops=0: must be null or a number > 0$"):
        ThroughputMonitor(peak_flops=0)


def test_cpu_peak_memory_is_the_process_own_not_its_parent_s():
    """getrusage's ru_maxrss survives exec: a process started by a larger one reports the parent's peak."""
    import subprocess
    import sys

    import numpy as np

    from lmlab.devices import peak_memory_gb

    ballast = np.ones(200_000_000)  # 1.6 GB, touched
    assert peak_memory_gb("cpu") > ballast.nbytes / 1e9
    code = "from lmlab.devices import peak_memory_gb; print(peak_memory_gb('cpu'))"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 0.01 < float(child.stdout) < 1.0  # the child's own peak: python and torch, not the 1.6 GB above


TINY_COST = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=64", "data.vocab_size=384",
             "data.batch_size=4", "data.block_size=16", "trainer.accelerator=cpu"]


@pytest.mark.parametrize("argv,line", [
    (["--price", "-3"], "Error: --price=-3.0: must be a number >= 0"),
    (["--price", "nan"], "Error: --price=nan: must be a number >= 0"),
    (["--price", "inf"], "Error: --price=inf: must be a number >= 0"),
    (["--peak-flops", "0"], "Error: --peak-flops=0.0: must be a number > 0"),
    (["--measure-steps", "0"], "Error: --measure-steps=0: must be an integer >= 1"),
    (["--decode-tokens", "-1"], "Error: --decode-tokens=-1: must be an integer >= 0"),
    (["callbacks.throughput.tokens_per_param=-1"],
     "Error: callbacks.throughput.tokens_per_param=-1: must be a number > 0"),
    (["callbacks.throughput.price_per_device_hour=-2"],
     "Error: callbacks.throughput.price_per_device_hour=-2: must be null or a number >= 0"),
    (["trainer.max_steps=30", "sched.warmup_steps=30"], "Error: sched.warmup_steps=30: "),
    (["trainer.devices=0"], "Error: trainer.devices=0: must be a count >= 1, -1 (every device), 'auto' or a list"),
])
def test_lmlab_cost_checks_every_input_before_measuring(argv, line, capsys, monkeypatch):
    """Flags as the parameters they stand for, the config as train.py checks it: one line, exit status 2, and
    nothing measured (the measurement would fail the test)."""
    monkeypatch.setattr(cost_cli, "project_from_config", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(SystemExit) as exit_:
        cost_cli.main([*TINY_COST, *argv])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith(line) and len(err.splitlines()) == 1


def test_lmlab_cost_takes_overrides_between_its_flags_in_a_real_process(tmp_path):
    """`lmlab cost model.n_layer=1 --price 2 trainer.max_steps=10` (before: "unrecognized arguments")."""
    import subprocess
    import sys

    cmd = [sys.executable, "-c", "import sys; from lmlab.cli.main import main; main(sys.argv[1:])", "cost",
           "model.n_layer=1", "--price", "2", "trainer.max_steps=10", "--measure-steps", "1", "--json",
           *TINY_COST[1:], "--decode-tokens", "0"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert printed["inputs"]["price_per_device_hour"] == 2.0 and printed["inputs"]["n_layer"] == 1
    assert printed["metrics"]["cost/train_flops"] == printed["metrics"]["cost/flops_per_token"] * 4 * 16 * 10
