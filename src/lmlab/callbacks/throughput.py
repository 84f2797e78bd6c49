"""Throughput, MFU and cost projections of a training run (`perf/` and `cost/` metrics).

Step time is wall-clock time between logging points divided by the optimizer steps in between
(validation time excluded); on CUDA the clock is read after a synchronize at logging points only,
so no step pays a host-device sync. Cost projections follow :mod:`lmlab.cost`: the parts that
need no throughput are logged at the first logging step, device-hours and money once a throughput
interval after warm-up has been measured. The measurements they need (a CPU's peak FLOP/s, the decode
speed) are taken at the first logging step too, after its interval is clocked: none delays the first step.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lmlab.arguments import NonNegative, NonNegativeInt, Positive, PositiveInt, checked
from lmlab.callbacks.metric_logging import log_interval, log_metrics
from lmlab.cost import (
    CostProjection,
    measure_decode_speed,
    mfu,
    model_shape,
    peak_flops_per_device,
    precision_dtype,
    train_flops_per_token,
)
from lmlab.devices import peak_memory_gb, synchronize


def tokens_in_batch(batch) -> tuple[int, int]:
    """(sequences, tokens per sequence) the model processes: an LM batch is a LongTensor [B, T + 1] of
    inputs and targets; a pair batch (loss=contrastive) runs both sides (padded widths)."""
    if isinstance(batch, dict):
        return batch["query_ids"].shape[0], batch["query_ids"].shape[1] + batch["doc_ids"].shape[1]
    if not isinstance(batch, torch.Tensor) or batch.ndim != 2:
        raise ValueError(
            f"ThroughputMonitor expects batches as [B, T+1] token tensors, got {type(batch).__name__}"
        )
    return batch.shape[0], batch.shape[1] - 1


class ThroughputMonitor(L.Callback):
    """Logs `perf/tokens_per_s` (all devices), `perf/step_time`, `perf/mfu`, `perf/peak_mem_gb`.

    Args:
        log_every_n_steps: optimizer steps per measurement; None: the trainer's log_every_n_steps
            (must be a multiple of it, or Lightning drops the values).
        peak_flops: peak FLOP/s of one device; None: detected (GPU table, CPU matmul).
        price_per_device_hour: money per device-hour for `cost/*_cost`; None: no money figures.
        tokens_per_param: compute-optimal token budget per parameter for `cost/optimal_*`.
        decode_tokens: tokens generated (batch 1, KV cache) at the first batch to measure decode
            speed for `cost/decode_*`; 0 skips it.
        warmup_intervals: measurement intervals (compilation, caches) before cost is projected.
    """

    @checked
    def __init__(
        self,
        log_every_n_steps: PositiveInt | None = None,
        peak_flops: Positive | None = None,
        price_per_device_hour: NonNegative | None = None,
        tokens_per_param: Positive = 20.0,
        decode_tokens: NonNegativeInt = 32,
        warmup_intervals: NonNegativeInt = 1,
    ):
        self.log_every_n_steps = log_every_n_steps
        self.peak_flops_override = peak_flops
        self.price_per_device_hour = price_per_device_hour
        self.tokens_per_param = tokens_per_param
        self.decode_tokens = decode_tokens
        self.warmup_intervals = warmup_intervals
        self.projection: CostProjection | None = None  # the latest, for the summary and `lmlab cost`

    def check_fit(self, trainer, model, datamodule) -> None:
        """What this callback needs of the run: called by ``setup`` and, before any work, by lmlab.preflight."""
        log_interval(trainer, self.log_every_n_steps)

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        self.every = log_interval(trainer, self.log_every_n_steps)

    def on_fit_start(self, trainer, pl_module):
        self.model = getattr(pl_module, "model", pl_module)
        self.device = pl_module.device
        self.dtype = precision_dtype(trainer.precision)
        self.autocast_dtype = self.dtype if "mixed" in str(trainer.precision) else None
        self.peak_flops = None  # measured (CPU) or looked up when first needed, at the first logging step
        self.world_size = trainer.world_size
        self.flops_per_token = None
        self.intervals = 0
        self.tokens_per_s = self.mfu = None  # the latest measurement
        self.tokens_seen = 0  # in this fit, all devices
        self._val_time = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.flops_per_token is not None:
            return
        self.batch_shape = tokens_in_batch(batch)
        self.flops_per_token = train_flops_per_token(model_shape(self.model), self.batch_shape[1])
        self._start_interval(trainer)

    def _project_cost(self, trainer) -> None:
        """The cost projection, with the peak FLOP/s and the decode speed it needs (measured here, once)."""
        sequences, seq_len = self.batch_shape
        self.peak_flops = peak_flops_per_device(self.device, self.dtype, self.peak_flops_override)
        decode_tps = None
        if self.decode_tokens:
            decode_tps = measure_decode_speed(
                self.model, new_tokens=self.decode_tokens, autocast_dtype=self.autocast_dtype
            )
        self.projection = CostProjection(
            flops_per_token=self.flops_per_token,
            n_params=model_shape(self.model).n_params,
            tokens_per_step=sequences * seq_len * trainer.accumulate_grad_batches * self.world_size,
            max_steps=max(trainer.max_steps, 0),
            world_size=self.world_size,
            peak_flops=self.peak_flops,
            price_per_device_hour=self.price_per_device_hour,
            decode_tokens_per_s=decode_tps,
            tokens_per_param=self.tokens_per_param,
        )
        self._log_cost(trainer)

    def _start_interval(self, trainer):
        synchronize(self.device)
        self._t0 = time.perf_counter()
        self._val_time = 0.0
        self._tokens = 0
        self._step0 = trainer.global_step

    def on_validation_start(self, trainer, pl_module):
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "fit" and not trainer.sanity_checking:  # not in trainer.validate()
            self._val_time += time.perf_counter() - self._val_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sequences, seq_len = tokens_in_batch(batch)
        self._tokens += sequences * seq_len * self.world_size
        self.tokens_seen += sequences * seq_len * self.world_size
        steps = trainer.global_step - self._step0
        if steps == 0 or trainer.global_step % self.every:
            return
        synchronize(self.device)
        elapsed = time.perf_counter() - self._t0 - self._val_time
        if self.projection is None:
            self._project_cost(trainer)
        self.tokens_per_s = self._tokens / elapsed
        metrics = {
            "perf/tokens_per_s": self.tokens_per_s,
            "perf/step_time": elapsed / steps,
            "perf/peak_mem_gb": peak_memory_gb(self.device),
        }
        if self.peak_flops:
            self.mfu = mfu(self.flops_per_token, self.tokens_per_s, self.peak_flops, self.world_size)
            metrics["perf/mfu"] = self.mfu
        log_metrics(trainer, metrics, trainer.global_step - 1, pl_module)  # not prog_bar: read after every batch
        self.intervals += 1
        if self.intervals == self.warmup_intervals + 1:
            self.projection.tokens_per_s = self.tokens_per_s
            self._log_cost(trainer)
        self._start_interval(trainer)

    def on_train_end(self, trainer, pl_module):
        if self.projection is None and self.flops_per_token is not None:  # no logging step was reached
            self._project_cost(trainer)
        if self.projection is not None and self.projection.tokens_per_s is None and self.tokens_per_s:
            rank_zero_warn(
                "ThroughputMonitor: run shorter than the warm-up; cost projected from the first interval"
            )
            self.projection.tokens_per_s = self.tokens_per_s
            self._log_cost(trainer)

    def _log_cost(self, trainer):
        log_metrics(trainer, self.projection.metrics(), max(trainer.global_step - 1, 0))
