"""How callbacks with their own logging interval write metrics: once, at a chosen step, in one transfer."""

from __future__ import annotations

import lightning as L
import torch

from lmlab.errors import ArgumentError


def log_metrics(trainer: L.Trainer, metrics: dict, step: int, pl_module: L.LightningModule | None = None
                ) -> dict[str, float]:
    """Write `metrics` to every logger once, at `step`, reading all tensors to the host in one transfer.

    Lightning's ``self.log`` would re-write a callback's last values at each of the trainer's
    logging steps; a callback with its own interval writes here instead. With `pl_module`, the
    values also go to ``trainer.callback_metrics`` (for the summary, checkpoint monitors), as
    ``self.log(..., logger=False)`` leaves them there but without its cost per key (a few tenths of a
    millisecond each: tens of keys made the StabilityMonitor's logging steps cost a tenth of a step).
    """
    keys = [k for k, v in metrics.items() if isinstance(v, torch.Tensor)]
    values = {k: float(v) for k, v in metrics.items() if k not in keys}
    if keys:
        stacked = torch.stack([metrics[k].detach().float().reshape(()) for k in keys]).cpu().tolist()
        values.update(zip(keys, stacked, strict=True))
    for logger in trainer.loggers:
        logger.log_metrics(values, step=step)
    if pl_module is not None:
        trainer.callback_metrics.update({key: torch.tensor(value) for key, value in values.items()})
    return values


def log_interval(trainer: L.Trainer, requested: int | None) -> int:
    """Steps between a callback's logs: its own ``log_every_n_steps`` or the trainer's, a multiple of the
    trainer's (Lightning's loggers only flush on the trainer's logging steps)."""
    every = requested or trainer.log_every_n_steps
    if trainer.log_every_n_steps and every % trainer.log_every_n_steps:
        raise ArgumentError("log_every_n_steps", every, "must be a multiple of the Trainer's log_every_n_steps="
                            f"{trainer.log_every_n_steps} (Lightning writes logs only on those steps)")
    return every
