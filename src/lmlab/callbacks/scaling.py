"""One point of a scaling-law sweep: the run's compute budget C, model size N and tokens D, checked."""

from __future__ import annotations

import lightning as L

from lmlab.arguments import NonNegativeInt, Positive, PositiveInt, checked
from lmlab.errors import ArgumentError
from lmlab.scaling.params import count_parameters


class ScalingPoint(L.Callback):
    """Marks a run as a point (N, D, C) of a scaling sweep (sweeps/scaling.yaml), so that its config.yaml
    records them and `lmlab scaling fit` reads them from there.

    The sweep computes the values from the config (OmegaConf resolvers); before any work they are
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

    def check_fit(self, trainer: L.Trainer, model, datamodule: L.LightningDataModule) -> None:
        """Before any work (lmlab.config.preflight): the point describes the model and batch this run trains."""
        total, non_embedding = count_parameters(model)
        if (total, non_embedding) != (self.params, self.non_embedding_params):
            raise ArgumentError("params", self.params, f"the model has {total} parameters ({non_embedding} outside "
                                "the embeddings; recorded: {non_embedding_params}): set the model's shape through the "
                                "sweep's keys, not after its point was computed",
                                non_embedding_params=self.non_embedding_params)
        if trainer.fast_dev_run:
            return
        per_step = datamodule.batch_size * datamodule.block_size * trainer.accumulate_grad_batches * trainer.world_size
        if trainer.max_steps * per_step != self.tokens:
            raise ArgumentError("tokens", self.tokens, f"the run trains {trainer.max_steps} steps x {per_step} tokens "
                                f"per step = {trainer.max_steps * per_step}: change the batch through the sweep's "
                                "keys, not after its point was computed")
