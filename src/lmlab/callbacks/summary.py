"""A table at the end of `python train.py`: how the run went, in one screen."""

from __future__ import annotations

import math
import time

import lightning as L
from rich.console import Console
from rich.table import Table

from lmlab.callbacks.stability import StabilityMonitor
from lmlab.callbacks.throughput import ThroughputMonitor
from lmlab.callbacks.timing import CallbackClock
from lmlab.cost import format_quantity
from lmlab.loggers import wandb_loggers


class RunSummary(L.Callback):
    """Prints final and best val loss, perplexity, steps, tokens, time, throughput, MFU, spikes and
    non-finite steps when fit ends (rank 0), and puts the same numbers in the W&B run summary.

    Counters and throughput come from the StabilityMonitor and ThroughputMonitor of the same
    trainer when present (their latest values, not only the last logged ones). What watching the run
    cost: each callback's hooks as a share of the fit's wall time (``callback_share/<class>``, and
    ``callbacks_share`` for all of them; :mod:`lmlab.callbacks.timing`).
    """

    def __init__(self, console: Console | None = None):
        self.console = console  # created when printing: a Console holds a lock, which ddp_spawn cannot pickle
        self.summary: dict[str, float | int | None] = {}
        self.clock: CallbackClock | None = None

    def setup(self, trainer, pl_module, stage):
        if stage == "fit":
            self.clock = CallbackClock.install(trainer)

    def on_fit_start(self, trainer, pl_module):
        self._start = time.perf_counter()
        self._best_val = math.inf

    def on_train_start(self, trainer, pl_module):
        batch = self.global_batch(trainer)
        if batch and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"train/{k}": v for k, v in batch.items()}, step=trainer.global_step)

    @staticmethod
    def global_batch(trainer) -> dict:
        """Sequences (and tokens) per optimizer step: micro batch x accumulation x world size."""
        data = trainer.datamodule
        micro = getattr(data, "batch_size", None)
        if micro is None:
            return {}
        out = {"global_batch": micro * trainer.accumulate_grad_batches * trainer.world_size, "micro_batch": micro,
               "accumulate_grad_batches": trainer.accumulate_grad_batches, "world_size": trainer.world_size}
        if getattr(data, "block_size", None):
            out["global_batch_tokens"] = out["global_batch"] * data.block_size
        return out

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get("val/loss")
        if value is not None and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._best_val = min(self._best_val, float(value))

    def on_fit_end(self, trainer, pl_module):
        self.summary = self.collect(trainer)
        for logger in wandb_loggers(trainer):
            logger.experiment.summary.update(
                {f"summary/{k}": v for k, v in self.summary.items() if v is not None}
            )
        if trainer.is_global_zero:
            (self.console or Console()).print(self.table(self.summary))

    def collect(self, trainer) -> dict:
        metrics = trainer.callback_metrics
        value = lambda key: float(metrics[key]) if key in metrics else None
        seconds = time.perf_counter() - self._start
        final_val = value("val/loss")
        out = {
            **self.global_batch(trainer),
            "val_loss": final_val,
            "best_val_loss": self._best_val if math.isfinite(self._best_val) else None,
            "steps": trainer.global_step,
            "tokens": value("train/tokens"),
            "time_s": seconds,
            "device_hours": seconds * trainer.world_size / 3600.0,
        }
        # perplexity for language models, retrieval figures for embedding (contrastive) runs
        out |= {key: value(f"val/{name}") for key, name in
                (("val_ppl", "ppl"), ("val_recall@1", "recall@1"), ("val_mrr", "mrr")) if f"val/{name}" in metrics}
        throughput = next((cb for cb in trainer.callbacks if isinstance(cb, ThroughputMonitor)), None)
        if throughput is not None:
            out["tokens"] = out["tokens"] or throughput.tokens_seen
            out["tokens_per_s"], out["mfu"] = throughput.tokens_per_s, throughput.mfu
        stability = next((cb for cb in trainer.callbacks if isinstance(cb, StabilityMonitor)), None)
        if stability is not None and hasattr(stability, "counters"):
            c = stability.counters
            out |= {
                name: int(c[name])
                for name in ("loss_spikes", "grad_norm_spikes", "nonfinite_steps", "skipped_steps")
            }
        if self.clock is not None and seconds > 0:
            shares = {name: t / seconds for name, t in sorted(self.clock.seconds.items(), key=lambda kv: -kv[1])}
            out["callbacks_share"] = sum(shares.values())
            out |= {f"callback_share/{name}": share for name, share in shares.items()}
        return out

    @staticmethod
    def table(summary: dict) -> Table:
        table = Table(title="Run summary", show_header=False)
        table.add_column("metric", style="bold")
        table.add_column("value", justify="right")
        labels = {
            "val_loss": "val loss (final)",
            "best_val_loss": "val loss (best)",
            "val_ppl": "val perplexity",
            "val_recall@1": "val recall@1",
            "val_mrr": "val MRR",
            "steps": "optimizer steps",
            "global_batch": "global batch (sequences)",
            "global_batch_tokens": "global batch (tokens)",
            "tokens": "tokens",
            "time_s": "time (s)",
            "device_hours": "device-hours",
            "tokens_per_s": "tokens/s",
            "mfu": "MFU",
            "loss_spikes": "loss spikes",
            "grad_norm_spikes": "grad-norm spikes",
            "nonfinite_steps": "non-finite steps",
            "skipped_steps": "skipped steps",
        }
        labels["callbacks_share"] = "callbacks' share of the time"
        labels |= {key: f"  {key.removeprefix('callback_share/')}" for key in summary
                   if key.startswith("callback_share/")}
        for key, label in labels.items():
            if key not in summary:
                continue
            v = summary[key]
            if key == "global_batch" and v is not None and "micro_batch" in summary:
                table.add_row(label, f"{v} = {summary['micro_batch']} x {summary['accumulate_grad_batches']} "
                                     f"accumulated x {summary['world_size']} devices")
                continue
            text = (
                "-"
                if v is None
                else f"{v:.2%}"
                if key == "mfu" or key.startswith(("callbacks_share", "callback_share/"))
                else (f"{v:.4f}" if key in ("val_loss", "best_val_loss", "val_recall@1", "val_mrr")
                      else format_quantity(v))
            )
            table.add_row(label, text)
        return table
