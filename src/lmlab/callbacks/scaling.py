"""One point of a scaling-law sweep: the run's compute budget C, model size N and tokens D, checked."""

from __future__ import annotations

import lightning as L

from lmlab.arguments import NonNegativeInt, Positive, PositiveInt, checked
from lmlab.errors import InputError
from lmlab.scaling.params import count_parameters


class ScalingPoint(L.Callback):
    """Marks a run as a point (N, D, C) of a scaling sweep (sweeps/scaling.yaml), so that its config.yaml
    records them and `lmlab scaling fit` reads them from there.

    The sweep computes the values from the config (OmegaConf resolvers); at the start of training they are
    checked against what is trained: the model's parameter counts and max_steps x tokens per optimizer
    step. An override that changed the model or the batch after the sweep computed them stops the run
    before its first step, so a recorded point never describes another run.

    Args:
        flops: the compute budget C the run belongs to (its IsoFLOP profile): C = 6 N D up to rounding D
            to whole optimizer steps.
        params: total parameters N.
        non_embedding_params: parameters outside the embedding tables.
        tokens: training tokens D = max_steps x tokens per optimizer step.
    """

    @checked
    def __init__(self, flops: Positive, params: PositiveInt, non_embedding_params: NonNegativeInt,
                 tokens: PositiveInt):
        self.flops, self.params, self.non_embedding_params, self.tokens = flops, params, non_embedding_params, tokens

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total, non_embedding = count_parameters(pl_module.model)
        if (total, non_embedding) != (self.params, self.non_embedding_params):
            raise InputError(f"callbacks.scaling records params={self.params}, non_embedding_params="
                             f"{self.non_embedding_params}, but the model has {total} and {non_embedding}: set the "
                             "model's shape through the sweep's keys, not after its point was computed")
        if trainer.fast_dev_run:
            return
        data = trainer.datamodule
        per_step = data.batch_size * data.block_size * trainer.accumulate_grad_batches * trainer.world_size
        if trainer.max_steps * per_step != self.tokens:
            raise InputError(f"callbacks.scaling.tokens={self.tokens}, but the run trains trainer.max_steps="
                             f"{trainer.max_steps} x {per_step} tokens per step = {trainer.max_steps * per_step}: "
                             "change the batch through the sweep's keys, not after its point was computed")
