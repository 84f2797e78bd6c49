"""Training progress: Lightning's rich bar on a terminal, plain log lines everywhere else.

A rich bar redraws one line in place; written to a log file (SLURM, CI, ``> train.log``) it shows
nothing until the run ends. There, lmlab prints one line every few optimizer steps instead.

Neither reads a metric to the host between logging steps: Lightning reads every
``self.log(..., prog_bar=True)`` value after every batch (a device sync per step), so lmlab logs step
metrics without ``prog_bar`` and both bars show them as of the latest logging step.
"""

from __future__ import annotations

import datetime
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from rich.console import Console

from lmlab.arguments import NonNegativeInt, PositiveInt, checked
from lmlab.cost import format_quantity


@checked
def progress_bar(refresh_rate: NonNegativeInt = 10, every_n_steps: PositiveInt | None = None) -> ProgressBar:
    """The rich bar (redrawn every `refresh_rate` batches) when stdout is a terminal or a notebook;
    otherwise :class:`ProgressLines` every `every_n_steps` optimizer steps (None: the trainer's
    ``log_every_n_steps``)."""
    if sys.stdout.isatty() or Console().is_jupyter:
        return LoggedMetricsRichBar(refresh_rate=refresh_rate)
    return ProgressLines(every_n_steps)


class LoggedMetricsRichBar(RichProgressBar):
    """Lightning's RichProgressBar, plus ``shown`` metrics read from ``trainer.callback_metrics`` at
    logging steps (every ``trainer.log_every_n_steps`` optimizer steps) only."""

    def __init__(self, refresh_rate: int = 1, shown: tuple[str, ...] = ("train/loss", "perf/tokens_per_s")):
        super().__init__(refresh_rate=refresh_rate)
        self.shown = tuple(shown)
        self._values: dict[str, float] = {}
        self._read_at = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step, every = trainer.global_step, trainer.log_every_n_steps
        if every and step % every == 0 and step != self._read_at:  # once per logging step (accumulation)
            self._read_at = step
            metrics = trainer.callback_metrics
            self._values = {key: float(metrics[key]) for key in self.shown if key in metrics}
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module):
        return {**super().get_metrics(trainer, pl_module), **self._values}

    def _get_train_description(self, current_epoch: int) -> str:
        """``Epoch 0``, not Lightning's ``Epoch 0/-2``, when the budget is steps (``max_epochs=-1``)."""
        if self.trainer.max_epochs not in (None, -1):
            return super()._get_train_description(current_epoch)
        return f"Epoch {current_epoch}".ljust(len(self.validation_description))


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class ProgressLines(ProgressBar):
    """Prints ``step 120/300 | loss 4.8123 | lr 2.95e-03 | 15.2 k tokens/s | 0:01:02 elapsed, 0:01:33 left``
    every `every_n_steps` optimizer steps, and the ``val/`` metrics after each validation (rank 0 only).

    Values are read from the trainer's logged metrics at those steps only, so the other steps pay no
    host-device sync for them.
    """

    @checked
    def __init__(self, every_n_steps: PositiveInt | None = None):
        super().__init__()
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._start = 0.0
        self._start_step = self._printed_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._start_step = self._printed_step = trainer.global_step  # a resumed run counts from here

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self.every_n_steps or trainer.log_every_n_steps or 1
        step = trainer.global_step
        if not self._enabled or step == self._printed_step or step % every:  # (accumulation: one line per step)
            return
        self._printed_step = step
        metrics = trainer.callback_metrics
        parts = [f"step {step}" + (f"/{trainer.max_steps}" if trainer.max_steps > 0 else "")]
        for key, label, form in (("train/loss", "loss", "{:.4f}"), ("train/lr", "lr", "{:.2e}")):
            if key in metrics:
                parts.append(f"{label} {form.format(float(metrics[key]))}")
        if "perf/tokens_per_s" in metrics:
            parts.append(f"{format_quantity(float(metrics['perf/tokens_per_s']))} tokens/s")
        elapsed = time.perf_counter() - self._start
        timing = f"{_duration(elapsed)} elapsed"
        if trainer.max_steps > 0:
            done = step - self._start_step
            timing += f", {_duration(elapsed / done * (trainer.max_steps - step))} left"
        self.print(" | ".join([*parts, timing]), flush=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if values:
            shown = " | ".join(f"{k} {v:.4f}" for k, v in sorted(values.items()))
            self.print(f"validation at step {trainer.global_step} | {shown}", flush=True)
