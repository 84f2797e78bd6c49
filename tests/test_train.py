"""End-to-end training runs: the command line, W&B files, DDP, resume and interrupts."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from helpers import LossRecorder, column, read_metrics, rows_with

from lmlab.checkpoint import load_checkpoint
from lmlab.cli.train import train
from lmlab.cost import format_quantity, model_shape, train_flops_per_token


def test_train_py_end_to_end_with_wandb_offline(run_train_py, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train_py("optimizer=lion", "sched=wsd", "optimizer.lr=2e-3", "logger=wandb", "trainer.max_steps=8")
    metrics = read_metrics(run_dir)
    assert len(column(metrics, "train/loss")) == 8
    assert len(column(metrics, "val/loss")) >= 2 and column(metrics, "val/ppl")
    # one offline W&B run inside the run directory, with its binary record log
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert list(wandb_run.glob("run-*.wandb"))
    # the decoding callback: metrics in the CSV, the texts as a W&B table
    assert column(metrics, "decode/sample/tokens_per_s") and column(metrics, "decode/sample/distinct_2")
    (table,) = sorted(wandb_run.glob("files/media/table/decode/samples_*.table.json"))[-1:]
    assert json.loads(table.read_text())["columns"] == ["step", "strategy", "prompt", "output"]
    # self-describing: resolved config, provenance, tokenizer, checkpoints that load alone
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    optimizer = config["optimizer"]
    assert (optimizer["_target_"], optimizer["lr"], optimizer["weight_decay"]) == ("lmlab.optim.Lion", 2e-3, 0.3)
    assert (config["sched"]["_target_"], config["sched"]["total_steps"]) == ("lmlab.optim.WSD", 8)  # resolved
    assert list(config["logger"]) == ["wandb"] and config["logger"]["wandb"]["save_dir"] == str(run_dir)
    assert max(column(metrics, "train/lr")) == pytest.approx(2e-3)  # the stable phase runs at the chosen lr
    info = json.loads((run_dir / "run.json").read_text())
    assert "optimizer=lion" in info["command"] and "optimizer.lr=2e-3" in info["overrides"]
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()
    model, tokenizer, _ = load_checkpoint(run_dir)
    assert tokenizer.decode(tokenizer.encode("def main():")) == "def main():"
    assert model(torch.tensor([tokenizer.encode("import os")])).logits.isfinite().all()
    assert "decoding figures" in proc.stdout and "tokens_per_s" in proc.stdout
    # the console when stdout is a pipe (a log file, SLURM, CI): a plain line per logged step, no rich bar
    lines = re.findall(r"^step (\d+)/8 \| loss [\d.]+ \| lr [\d.]+e-0\d \| .*elapsed, [\d:]+ left$", proc.stdout,
                       re.MULTILINE)
    assert lines == [str(step) for step in range(1, 9)], proc.stdout
    assert re.search(r"^validation at step 6 \| val/loss [\d.]+ \| val/ppl [\d.]+$", proc.stdout, re.MULTILINE)
    assert "Epoch 0" not in proc.stdout  # the rich bar's label
    # the model summary shows lmlab's training FLOPs, not Lightning's forward count of 0
    flops = format_quantity(train_flops_per_token(model_shape(model), 32))
    assert f"Training FLOPs per token: {flops} " in proc.stdout and "FLOPs: 0" not in proc.stdout
    for noise in ("LeafSpec", "litlogger"):  # library messages the user cannot act on
        assert noise not in proc.stdout + proc.stderr


def test_validation_loss_falls(make_cfg):
    cfg = make_cfg("trainer.max_steps=40", "trainer.val_check_interval=20", "optimizer.lr=1e-2")
    train(cfg)
    val = column(read_metrics(Path(cfg.paths.output_dir)), "val/loss")
    untrained = math.log(cfg.data.vocab_size)  # small-init logits are ~uniform
    assert len(val) == 2 and val[1] < val[0] < untrained - 0.8


def test_a_misspelled_optimized_metric_is_named_with_the_logged_ones(make_cfg, monkeypatch):
    import lmlab.cli.train as train_cli

    warnings = []  # the warning call itself: earlier in-process Hydra apps reconfigure logging
    monkeypatch.setattr(train_cli.log, "warning", lambda message, *args: warnings.append(message % args))
    cfg = make_cfg("trainer.max_steps=2", "trainer.val_check_interval=2", "sched.warmup_steps=1",
                   "callbacks=none", "optimized_metric=val/los")
    assert train(cfg) is None
    warned = " ".join(warnings)
    assert "optimized_metric=val/los was never logged" in warned and "did you mean val/loss?" in warned
    warnings.clear()  # validation off: val/loss is missing for a reason, and nothing is said
    train(make_cfg("trainer.max_steps=2", "trainer.limit_val_batches=0", "sched.warmup_steps=1", "callbacks=none",
                   run_dir=Path(cfg.paths.output_dir).parent / "no_val"))
    assert not [w for w in warnings if "never logged" in w]


@pytest.mark.ddp
def test_ddp_spawn_two_processes_log_once(make_cfg):
    cfg = make_cfg("trainer=ddp_spawn", "trainer.accelerator=cpu", "trainer.max_steps=4",
                   "trainer.val_check_interval=2")
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert list(read_metrics(run_dir)["train/loss"]) == [0, 1, 2, 3]
    assert rows_with(run_dir, "train/loss") == 4  # rank 0 alone writes, once per step


def test_resume_after_sigterm_equals_straight_run(make_cfg, tmp_path):
    recorder = ["+callbacks.recorder._target_=helpers.LossRecorder"]
    train(make_cfg(*recorder, "trainer.max_steps=8", run_dir=tmp_path / "straight"))
    straight = LossRecorder.read(tmp_path / "straight")

    interrupted = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as stop:
        train(make_cfg(*recorder, "trainer.max_steps=8", "+callbacks.stop._target_=helpers.SigtermAtStep",
                       "+callbacks.stop.step=5", run_dir=interrupted))
    assert stop.value.code == 143
    assert (interrupted / "checkpoints" / "last.ckpt").is_file()
    assert len(column(read_metrics(interrupted), "train/loss")) == 5  # the logs so far are kept
    train(make_cfg(*recorder, "trainer.max_steps=8", "ckpt_path=last", run_dir=interrupted))
    resumed = LossRecorder.read(interrupted)  # the steps before the interrupt, then those after the resume
    assert sorted(resumed) == sorted(straight) == list(range(1, 9))
    for step, loss in straight.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-6, abs=1e-6), step


@pytest.mark.ddp
def test_strategy_ddp_relaunches_the_script_and_logs_from_rank_zero(run_train_py, tmp_path):
    run_train_py("trainer=ddp", "trainer.accelerator=cpu", "trainer.max_steps=4", "trainer.val_check_interval=2")
    metrics = read_metrics(tmp_path / "run")
    assert len(column(metrics, "train/loss")) == 4


def test_fused_optimizer_with_mixed_precision_and_clipping_is_clipped_by_the_module(make_cfg):
    """Lightning refuses to clip a fused optimizer under AMP; without a loss scaler (bf16-mixed) LitLM clips
    the unscaled gradients itself and keeps the fused step."""
    cfg = make_cfg("optimizer=torch_adamw", "optimizer.fused=true", "trainer.precision=bf16-mixed",
                   "trainer.gradient_clip_val=1e-3", "trainer.max_steps=3", "callbacks=none",
                   "+callbacks.stability._target_=lmlab.callbacks.stability.StabilityMonitor")
    train(cfg)
    metrics = read_metrics(Path(cfg.paths.output_dir))
    clipped, raw = column(metrics, "stability/grad_norm_clipped"), column(metrics, "stability/grad_norm")
    assert len(clipped) == 3
    for c, r in zip(clipped, raw, strict=True):
        assert c == pytest.approx(1e-3, rel=1e-2) and r > 1e-2


def test_optimizer_factory_is_called_with_the_model():
    """The optimizer contract: factory(model). lmlab's optimizers group the model's parameters themselves
    (weight decay on matrices only), so a plain class or a lambda gets the configured decay, not 0."""
    from lmlab.models import GPT
    from lmlab.module import LitLM
    from lmlab.optim import AdamW, Muon, grouped

    model = GPT(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16, tie_embeddings=False)
    matrices = {id(p) for n, p in model.named_parameters() if p.ndim == 2 and "wte" not in n and "wpe" not in n}
    for factory in (lambda m: AdamW(m, lr=1e-3, weight_decay=0.3),
                    lambda m: grouped(m, "torch.optim.AdamW", lr=1e-3, weight_decay=0.3)):
        optimizer = LitLM(model, torch.nn.Identity(), factory).configure_optimizers()
        decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.3 for p in g["params"]}
        assert decay == matrices
    muon = LitLM(model, torch.nn.Identity(), lambda m: Muon(m, lr=0.02)).configure_optimizers()
    hidden = {id(p) for g in muon.param_groups if g["use_muon"] for p in g["params"]}
    assert hidden and hidden < matrices and id(model.lm_head.weight) not in hidden
    with pytest.raises(ValueError, match="factory\\(model\\)"):
        LitLM(model, torch.nn.Identity(), lambda m: "not an optimizer").configure_optimizers()
