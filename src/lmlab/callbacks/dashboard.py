"""The W&B dashboard layout: every namespace against the global step, and the summary statistics."""

from __future__ import annotations

import lightning as L

from lmlab.loggers import wandb_loggers

NAMESPACES = ("train", "val", "stability", "perf", "cost", "decode")
STEP_METRIC = "trainer/global_step"  # what Lightning's WandbLogger logs as the step


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
