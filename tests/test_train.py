"""End-to-end training runs: the command line, W&B files, DDP, resume and interrupts."""

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import LossRecorder, column, read_metrics

from lmlab.checkpoint import load_checkpoint
from lmlab.cli.train import train


def test_train_py_end_to_end_with_wandb_offline(run_train_py, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train_py("optimizer=adamw", "sched=cosine", "logger=wandb", "trainer.max_steps=8")
    rows = read_metrics(run_dir)
    assert len(column(rows, "train/loss")) == 8
    assert len(column(rows, "val/loss")) >= 2 and column(rows, "val/ppl")
    # one offline W&B run inside the run directory, with its binary record log
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert list(wandb_run.glob("run-*.wandb"))
    # the decoding callback: metrics in the CSV, the texts as a W&B table
    assert column(rows, "decode/sample/tokens_per_s") and column(rows, "decode/sample/distinct_2")
    (table,) = sorted(wandb_run.glob("files/media/table/decode/samples_*.table.json"))[-1:]
    assert json.loads(table.read_text())["columns"] == ["step", "strategy", "prompt", "output"]
    # self-describing: resolved config, provenance, tokenizer, checkpoints that load alone
    assert "optimizer" in (run_dir / "config.yaml").read_text()
    info = json.loads((run_dir / "run.json").read_text())
    assert "optimizer=adamw" in info["command"] and info["overrides"]
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()
    model, tokenizer, _ = load_checkpoint(run_dir)
    assert tokenizer.decode(tokenizer.encode("def main():")) == "def main():"
    assert model(torch.tensor([tokenizer.encode("import os")])).logits.isfinite().all()
    assert "decoding figures" in proc.stdout and "tokens_per_s" in proc.stdout


def test_validation_loss_falls(make_cfg):
    cfg = make_cfg("trainer.max_steps=40", "trainer.val_check_interval=20", "optimizer.lr=1e-2")
    train(cfg)
    val = column(read_metrics(Path(cfg.paths.output_dir)), "val/loss")
    untrained = math.log(cfg.data.vocab_size)  # small-init logits are ~uniform
    assert len(val) == 2 and val[1] < val[0] < untrained - 0.8


@pytest.mark.ddp
def test_ddp_spawn_two_processes_log_once(make_cfg):
    cfg = make_cfg("trainer=ddp_spawn", "trainer.accelerator=cpu", "trainer.max_steps=4",
                   "trainer.val_check_interval=2")
    train(cfg)
    rows = read_metrics(Path(cfg.paths.output_dir))
    steps = [r["step"] for r in rows if r.get("train/loss")]
    assert len(steps) == 4 and len(set(steps)) == 4  # rank 0 alone writes, once per step


def test_resume_after_sigterm_equals_straight_run(make_cfg, tmp_path):
    recorder = ["+callbacks.recorder._target_=helpers.LossRecorder"]
    LossRecorder.losses = []
    train(make_cfg(*recorder, "trainer.max_steps=8", run_dir=tmp_path / "straight"))
    straight = dict(LossRecorder.losses)

    LossRecorder.losses = []
    interrupted = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as stop:
        train(make_cfg(*recorder, "trainer.max_steps=8", "+callbacks.stop._target_=helpers.SigtermAtStep",
                       "+callbacks.stop.step=5", run_dir=interrupted))
    assert stop.value.code == 143
    assert (interrupted / "checkpoints" / "last.ckpt").is_file()
    assert len(column(read_metrics(interrupted), "train/loss")) == 5  # the logs so far are kept
    train(make_cfg(*recorder, "trainer.max_steps=8", "ckpt_path=last", run_dir=interrupted))
    resumed = dict(LossRecorder.losses)
    assert sorted(resumed) == sorted(straight)
    for step, loss in straight.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-6, abs=1e-6), step


@pytest.mark.ddp
def test_strategy_ddp_relaunches_the_script_and_logs_from_rank_zero(run_train_py, tmp_path):
    run_train_py("trainer=ddp", "trainer.accelerator=cpu", "trainer.max_steps=4", "trainer.val_check_interval=2")
    rows = read_metrics(tmp_path / "run")
    assert len(column(rows, "train/loss")) == 4


def test_fused_optimizer_with_mixed_precision_and_clipping_runs(make_cfg):
    """Lightning refuses to clip a fused optimizer under AMP; lmlab falls back to foreach instead."""
    cfg = make_cfg("optimizer=torch_adamw", "optimizer.fused=true", "trainer.precision=bf16-mixed",
                   "trainer.gradient_clip_val=0.5", "trainer.max_steps=2")
    with pytest.warns(UserWarning, match="foreach"):
        train(cfg)
