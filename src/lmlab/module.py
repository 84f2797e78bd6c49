"""The LightningModule: the one place where model, task, loss, optimizer and schedule meet.

Everything it wires is built from config groups and handed in; the optimizer and the schedule arrive as
factories and are completed in ``configure_optimizers``. What a batch means is the task's business
(:mod:`lmlab.tasks`); this module logs what the task returns and keeps checkpoints self-describing.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn as nn

from lmlab.callbacks.forward_stats import LogitStats
from lmlab.checkpoint import FORMAT_VERSION
from lmlab.errors import InputError
from lmlab.optim.clipping import clip_gradients
from lmlab.spec import model_spec, tokenizer_spec
from lmlab.tasks import LanguageModeling


class LitLM(LogitStats, L.LightningModule):
    """Args:
        model: lmlab's GPT or ``HFCausalLM``.
        loss: a language-modelling, teacher or contrastive loss module.
        optimizer: ``optimizer(model) -> torch.optim.Optimizer``. lmlab's optimizers take the model and
            group its parameters themselves (no weight decay on biases, norms and embeddings; Muon's
            own split); ``lmlab.optim.grouped`` does the same for any torch optimizer.
        scheduler: ``scheduler(optimizer) -> LRScheduler``, stepped every optimizer step; or None.
        task: what the model is trained to do (:mod:`lmlab.tasks`); language modelling by default.
        compile: run the forward under ``torch.compile``.
        tokenizer: stored in every checkpoint, so a checkpoint alone can decode.
        run_settings: plain values stored in every checkpoint, which a resume compares with its own config
            (the data, batch, optimizer and schedule settings: :mod:`lmlab.config.resume`).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        optimizer: Callable[[nn.Module], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
        task: nn.Module | None = None,
        compile: bool = False,
        tokenizer=None,
        run_settings: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.loss = loss
        self.task = task if task is not None else LanguageModeling()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.tokenizer = tokenizer
        self.run_settings = run_settings
        self._configured_groups: list[dict] = []
        # compile the forward only, so state-dict keys stay those of the plain model
        self.forward_fn = torch.compile(model.forward) if compile else model.forward
        self.tokens_seen = 0
        self._restored_rng: dict | None = None

    def forward(self, input_ids, **kwargs):
        return self.model(input_ids, **kwargs)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, logits, n_tokens = self.task.training_loss(self.forward_fn, self.loss, batch)
        if logits is not None:
            self.record_logits(logits)
        self._log_training(loss, n_tokens)
        return loss

    def _log_training(self, loss: torch.Tensor, n_tokens: int) -> None:
        """No host-device sync: Lightning reads prog_bar values to the host after every batch (the
        progress bar shows the loss itself, lmlab.callbacks.progress) and turns Python numbers into
        device tensors with a blocking copy, so those are logged on logging steps only."""
        self.tokens_seen += n_tokens * self.trainer.world_size
        self.log("train/loss", loss, on_step=True)
        trainer = self.trainer
        step = trainer.global_step + 1  # Lightning writes step metrics after every log_every_n_steps-th step
        if trainer.log_every_n_steps and (step % trainer.log_every_n_steps == 0 or step == trainer.max_steps):
            self.log("train/tokens", float(self.tokens_seen), on_step=True)
            group = trainer.optimizers[0].param_groups[0]  # the schedule's LR (μP groups scale their own)
            self.log("train/lr", group["lr"] / group.get("lr_multiplier", 1.0), on_step=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.task.validation_step(self.forward_fn, batch)

    def on_validation_epoch_end(self) -> None:
        gather = self.all_gather if self.trainer.world_size > 1 else None
        for name, value in self.task.validation_metrics(self.loss, gather).items():
            self.log(name, value, prog_bar=name in ("val/loss", "val/recall@1"), sync_dist=False)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.model)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise InputError(f"optimizer: the factory returned a {type(optimizer).__name__}; it is called as "
                             "factory(model) and must return a torch.optim.Optimizer")
        # this config's settings of each group, before a schedule sets the LR (see on_train_start)
        self._configured_groups = [{k: v for k, v in group.items() if k != "params"} for group in
                                   optimizer.param_groups]
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """A resumed run trains with this config's optimizer settings: Lightning restores the checkpoint's
        (weight decay, betas, ...) with the optimizer state, so they are set again here; the LR is the schedule's
        (which follows this config from the resumed step, lmlab.optim.schedules), or this config's without one."""
        scheduled = ("lr", "initial_lr") if self.scheduler_factory is not None else ()
        optimizer = self.trainer.optimizers[0]
        for group, configured in zip(optimizer.param_groups, self._configured_groups, strict=True):
            group.update({k: v for k, v in configured.items() if k not in scheduled})

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Validate after the last step too: Lightning validates every ``val_check_interval`` batches only, so a
        run of any other length would end without its final val/loss (and a short one without any); a run asked to
        stop is validated once more."""
        trainer = self.trainer
        if not trainer.fast_dev_run and 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Lightning refuses to clip a fused optimizer under any mixed precision; without a loss scaler
        (bf16-mixed) its gradients are unscaled already, so they are clipped here (lmlab.optim.clipping).
        With a scaler (16-mixed) the config check refuses that combination before any work."""
        if gradient_clip_val and optimizer.defaults.get("fused"):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            clip_gradients(params, gradient_clip_val, gradient_clip_algorithm or "norm")
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Make every checkpoint self-describing (model and tokenizer rebuild from it alone) and resumable
        bit for bit (the RNG state, for dropout)."""
        checkpoint["lmlab"] = {
            "format_version": FORMAT_VERSION,
            "model": model_spec(self.model),
            "tokenizer": tokenizer_spec(self.tokenizer) if self.tokenizer is not None else None,
            "tokens_seen": self.tokens_seen,
            "run_settings": self.run_settings,
            "rng": {"cpu": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("lmlab", {})
        self.tokens_seen = meta.get("tokens_seen", 0)
        self._restored_rng = meta.get("rng")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """Restore the RNG at the first step after a resume: the DataLoaders draw from it when they
        start, which an uninterrupted run did at other times."""
        if self._restored_rng is None:
            return
        rng, self._restored_rng = self._restored_rng, None
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
