"""Where the `stability/`, `perf/` and `cost/` metrics go: the loggers, and the W&B dashboard layout."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

NAMESPACES = ("train", "val", "stability", "perf", "cost", "decode")
STEP_METRIC = "trainer/global_step"  # what Lightning's WandbLogger logs as the step


def log_metrics(
    trainer: L.Trainer,
    metrics: dict,
    step: int,
    pl_module: L.LightningModule | None = None,
    prog_bar: tuple[str, ...] = (),
) -> dict[str, float]:
    """Write `metrics` to every logger once, at `step`, reading all tensors to the host in one transfer.

    Lightning's ``self.log`` would re-write a callback's last values at each of the trainer's
    logging steps; a callback with its own interval writes here instead. With `pl_module`, the
    values also go to ``trainer.callback_metrics`` (for the summary, checkpoint monitors) and,
    for the keys in `prog_bar`, to the progress bar.
    """
    keys = [k for k, v in metrics.items() if isinstance(v, torch.Tensor)]
    values = {k: float(v) for k, v in metrics.items() if k not in keys}
    if keys:
        stacked = torch.stack([metrics[k].detach().float().reshape(()) for k in keys]).cpu().tolist()
        values.update(zip(keys, stacked, strict=True))
    for logger in trainer.loggers:
        logger.log_metrics(values, step=step)
    if pl_module is not None:
        for key, value in values.items():
            pl_module.log(
                key, value, logger=False, prog_bar=key in prog_bar, on_step=True, on_epoch=False, batch_size=1
            )
    return values


def log_interval(trainer: L.Trainer, requested: int | None, field: str) -> int:
    """Steps between a callback's logs: its own setting or the trainer's, a multiple of the trainer's
    (Lightning's loggers only flush on the trainer's logging steps)."""
    every = requested or trainer.log_every_n_steps
    if trainer.log_every_n_steps and every % trainer.log_every_n_steps:
        raise ValueError(
            f"{field}={every} must be a multiple of trainer.log_every_n_steps={trainer.log_every_n_steps}"
        )
    return every


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


class WandbDashboard(L.Callback):
    """Lays out the W&B run: every namespace plotted against the global step, `val/loss`
    summarised by its minimum and the spike / non-finite counters by their maximum.

    Does nothing without a WandbLogger, so it can stay in the default callbacks.
    """

    MIN_SUMMARY = ("val/loss", "val/ppl")
    MAX_SUMMARY = (
        "stability/loss_spikes",
        "stability/grad_norm_spikes",
        "stability/nonfinite_steps",
        "stability/skipped_steps",
        "stability/max_logit",
        "perf/peak_mem_gb",
    )

    def on_fit_start(self, trainer, pl_module):
        for logger in wandb_loggers(trainer):
            run = logger.experiment
            run.define_metric(STEP_METRIC)
            run.define_metric("train/tokens", step_metric=STEP_METRIC)  # the alternative x axis: tokens seen
            for namespace in NAMESPACES:
                run.define_metric(f"{namespace}/*", step_metric=STEP_METRIC)
            for name in self.MIN_SUMMARY:
                run.define_metric(name, step_metric=STEP_METRIC, summary="min")
            for name in self.MAX_SUMMARY:
                run.define_metric(name, step_metric=STEP_METRIC, summary="max")
