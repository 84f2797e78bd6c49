"""What watching a run costs: each callback's time (lmlab.callbacks.timing) in the run summary, and the decoding
evaluation held to its share of the run."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
from helpers import column, read_metrics
from lightning.pytorch.profilers import Profiler

from lmlab.callbacks.summary import RunSummary
from lmlab.callbacks.timing import CallbackClock, callback_name
from lmlab.cli.train import train

NAP = 0.02


class Napper(L.Callback):
    """Sleeps NAP in every on_train_batch_end, and NAP more in on_save_checkpoint (which Lightning calls inside
    ModelCheckpoint's own hooks: counted there, not twice)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(NAP)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        time.sleep(NAP)


def test_each_callback_is_clocked_once_and_its_share_is_in_the_summary(make_cfg):
    cfg = make_cfg("trainer.max_steps=4", "trainer.val_check_interval=2", "callbacks=none", "logger=csv",
                   "+callbacks.napper._target_=test_callback_cost.Napper",
                   "+callbacks.summary._target_=lmlab.callbacks.summary.RunSummary")
    summaries = []
    original = RunSummary.collect
    RunSummary.collect = lambda self, trainer: summaries.append(original(self, trainer)) or summaries[-1]
    try:
        train(cfg)
    finally:
        RunSummary.collect = original
    (summary,) = summaries
    napped = summary["callback_share/Napper"] * summary["time_s"]
    assert 4 * NAP <= napped < 4 * NAP + 0.05  # four steps' naps; the checkpoints' naps count for ModelCheckpoint
    saves = summary["callback_share/ModelCheckpoint"] * summary["time_s"]
    assert saves >= 2 * NAP  # two validations, each saving at least once, each save napping
    shares = {k: v for k, v in summary.items() if k.startswith("callback_share/")}
    assert summary["callbacks_share"] == pytest.approx(sum(shares.values())) and summary["callbacks_share"] < 1
    assert "callbacks' share of the time" in str(RunSummary.table(summary).columns[0]._cells)


class Recorder(Profiler):
    def __init__(self):
        super().__init__()
        self.calls = []

    def start(self, action_name):
        self.calls.append(("start", action_name))

    def stop(self, action_name):
        self.calls.append(("stop", action_name))


def test_a_nested_hook_counts_for_the_outer_callback_and_every_call_reaches_the_profiler():
    outer = "[Callback]ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min'}.on_validation_end"
    nested, module = "[Callback]Napper.on_save_checkpoint", "[LightningModule]LitLM.training_step"
    trainer = SimpleNamespace(profiler=Recorder())
    inner, clock = trainer.profiler, CallbackClock.install(trainer)
    assert CallbackClock.install(trainer) is clock is trainer.profiler and clock.inner is inner
    with clock.profile(outer):
        time.sleep(NAP)
        with clock.profile(nested):
            time.sleep(NAP)
    with clock.profile(module):
        time.sleep(NAP)
    assert inner.calls == [("start", outer), ("start", nested), ("stop", nested), ("stop", outer),
                           ("start", module), ("stop", module)]
    assert set(clock.seconds) == {"ModelCheckpoint"} and 2 * NAP <= clock.seconds["ModelCheckpoint"] < 3 * NAP
    assert callback_name(nested) == "Napper"


@pytest.mark.parametrize("budget,evaluated", [("null", 3), ("1e-9", 1)])
def test_decoding_evaluations_keep_to_their_time_budget(make_cfg, budget, evaluated):
    cfg = make_cfg("trainer.max_steps=6", "trainer.val_check_interval=2", "logger=csv",
                   f"callbacks.decoding.time_budget={budget}")
    train(cfg)
    metrics = read_metrics(Path(cfg.paths.output_dir))
    assert len(column(metrics, "val/loss")) == 3
    assert len(column(metrics, "decode/sample/tokens_per_s")) == evaluated
