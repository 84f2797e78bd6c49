"""Schemas of the ``trainer``, ``logger`` and ``callbacks`` groups."""

from __future__ import annotations

from typing import Annotated, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.strategies import StrategyRegistry
from pydantic import Field, field_validator, model_validator

from lmlab.callbacks.decoding import DecodingEvaluator
from lmlab.callbacks.interrupt import CheckpointOnInterrupt
from lmlab.callbacks.model_summary import ModelSummary
from lmlab.callbacks.progress import progress_bar
from lmlab.callbacks.stability import PER_LAYER, POLICIES, StabilityMonitor
from lmlab.callbacks.throughput import ThroughputMonitor
from lmlab.config.messages import unknown_key_hint
from lmlab.config.schema import (
    Bool,
    Int,
    NonNegative,
    NonNegativeInt,
    Positive,
    PositiveInt,
    Probability,
    Schema,
    Str,
    ValidationInfo,
    schema_of,
)
from lmlab.loggers import WANDB_MODES, wandb_logger
from lmlab.quantization import MODES

PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64", "16", "bf16",
              "transformer-engine", "transformer-engine-float16", 16, 32, 64)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")
# an integer count of batches, or a fraction of the epoch's batches
Batches = NonNegativeInt | Probability


@schema_of(L.Trainer)
class TrainerSchema(Schema):
    """Lightning's Trainer: the settings lmlab's configs use, checked; every other argument by its type."""

    open_signature = True

    accelerator: Literal[ACCELERATORS] = "auto"
    strategy: Str = "auto"
    devices: PositiveInt | Literal[-1, "auto"] | Annotated[list[NonNegativeInt], Field(min_length=1)] | Str = "auto"
    num_nodes: PositiveInt = 1
    precision: Literal[PRECISIONS] | None = None
    max_steps: Annotated[int, Field(strict=True, ge=-1)] = -1
    max_epochs: Annotated[int, Field(strict=True, ge=-1)] | None = None
    val_check_interval: PositiveInt | Annotated[float, Field(strict=True, gt=0, le=1)] | None = None
    check_val_every_n_epoch: PositiveInt | None = 1
    limit_train_batches: Batches | None = None
    limit_val_batches: Batches | None = None
    num_sanity_val_steps: Annotated[int, Field(strict=True, ge=-1)] | None = None
    gradient_clip_val: NonNegative | None = None
    gradient_clip_algorithm: Literal["norm", "value"] | None = None
    accumulate_grad_batches: PositiveInt = 1
    log_every_n_steps: PositiveInt | None = None
    deterministic: Bool | Literal["warn"] | None = None
    use_distributed_sampler: Bool = True
    fast_dev_run: Bool | NonNegativeInt = False
    overfit_batches: Batches = 0.0

    @field_validator("strategy")
    @classmethod
    def known_strategy(cls, value: str, info: ValidationInfo) -> str:
        known = ["auto", *StrategyRegistry.available_strategies()]
        if value not in known:
            raise ValueError(f"{cls.key(info, 'strategy')}={value!r}: not a Lightning strategy; "
                             + unknown_key_hint(value, known, "").removeprefix("unknown key; "))
        return value

    @model_validator(mode="after")
    def steps_and_clipping(self, info: ValidationInfo) -> TrainerSchema:
        if self.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ValueError(f"{self.key(info, 'accelerator')}={self.accelerator}: no CUDA device is available on this "
                             "machine; use trainer=cpu or trainer.accelerator=auto")
        if not self.fast_dev_run and self.max_steps < 1:  # schedules and cost projections count optimizer steps
            raise ValueError(f"{self.key(info, 'max_steps')}={self.max_steps}: must be a positive number of "
                             "optimizer steps (>= 1)")
        if self.gradient_clip_algorithm == "value" and self.gradient_clip_val == 0:
            raise ValueError(f"{self.key(info, 'gradient_clip_val')}=0 with gradient_clip_algorithm=value would "
                             "zero every gradient; use null to turn clipping off")
        return self


# ---- logger --------------------------------------------------------------------------------------


@schema_of(wandb_logger)
class WandbSchema(Schema):
    """lmlab's W&B logger; other keys go to Lightning's WandbLogger and wandb.init."""

    open_signature = True

    save_dir: Str
    project: Str = "lmlab"
    mode: Literal[WANDB_MODES] = "auto"
    name: Str | None = None
    group: Str | None = None
    tags: list[Str] = []


# ---- callbacks -----------------------------------------------------------------------------------


@schema_of(ModelCheckpoint)
class ModelCheckpointSchema(Schema):
    open_signature = True

    dirpath: Str | None = None
    filename: Str | None = None
    monitor: Str | None = None
    mode: Literal["min", "max"] = "min"
    save_top_k: Annotated[int, Field(strict=True, ge=-1)] = 1
    save_last: Bool | Literal["link"] | None = None
    every_n_train_steps: NonNegativeInt | None = None


@schema_of(EarlyStopping)
class EarlyStoppingSchema(Schema):
    open_signature = True

    monitor: Str
    mode: Literal["min", "max"] = "min"
    patience: NonNegativeInt = 3
    min_delta: NonNegative = 0.0
    check_finite: Bool = True
    verbose: Bool = False


@schema_of(CheckpointOnInterrupt)
class CheckpointOnInterruptSchema(Schema):
    dirpath: Str
    filename: Str = "last"


@schema_of(StabilityMonitor)
class StabilitySchema(Schema):
    log_every_n_steps: PositiveInt | None = None
    per_layer: Literal[PER_LAYER] = "scalars"
    spike_window: Annotated[int, Field(strict=True, ge=2)] = 128
    spike_warmup: Annotated[int, Field(strict=True, ge=2)] = 64
    spike_threshold: Positive = 6.0
    detect_grad_spikes: Bool = True
    policy: Literal[POLICIES] = "log"
    clip_val: Positive | None = None
    halt_checkpoint_dir: Str | None = None

    @model_validator(mode="after")
    def warmup_within_window(self, info: ValidationInfo) -> StabilitySchema:
        if self.spike_warmup > self.spike_window:
            raise ValueError(f"{self.key(info, 'spike_warmup')}={self.spike_warmup}: must be at most "
                             f"{self.key(info, 'spike_window')}={self.spike_window}")
        return self


@schema_of(ThroughputMonitor)
class ThroughputSchema(Schema):
    log_every_n_steps: PositiveInt | None = None
    peak_flops: Positive | None = None
    price_per_device_hour: NonNegative | None = None
    tokens_per_param: Positive = 20.0
    decode_tokens: NonNegativeInt = 32
    warmup_intervals: NonNegativeInt = 1


@schema_of(progress_bar)
class ProgressSchema(Schema):
    refresh_rate: NonNegativeInt = 10
    every_n_steps: PositiveInt | None = None


@schema_of(ModelSummary)
class ModelSummarySchema(Schema):
    max_depth: NonNegativeInt = 1


@schema_of(DecodingEvaluator)
class DecodingEvaluatorSchema(Schema):
    nested_groups = {"strategies": "decoding"}

    strategies: dict
    name: Str = "decoding"
    num_prompts: PositiveInt = 4
    prompt_tokens: PositiveInt = 16
    max_new_tokens: PositiveInt = 32
    every_n_validations: PositiveInt = 1
    seed: Int = 0
    quantize: Literal[MODES] | None = None
    quantize_group_size: PositiveInt | None = None
