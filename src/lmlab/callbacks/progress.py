"""The progress bar, without a host-device sync per step.

Lightning reads every ``self.log(..., prog_bar=True)`` value to the host after every batch, which
stalls a GPU's queue once per step. lmlab logs step metrics without ``prog_bar`` and this bar shows
them as of the latest logging step, when they are read to the host anyway.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """Lightning's RichProgressBar, plus ``shown`` metrics read from ``trainer.callback_metrics`` at
    logging steps (every ``trainer.log_every_n_steps`` optimizer steps)."""

    def __init__(self, refresh_rate: int = 1, leave: bool = False,
                 shown: tuple[str, ...] = ("train/loss", "perf/tokens_per_s"), **kwargs):
        super().__init__(refresh_rate=refresh_rate, leave=leave, **kwargs)
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
