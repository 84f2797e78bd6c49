"""The LightningModule: the one place where model, loss, optimizer and schedule meet.

Everything it wires is built by Hydra from config groups and handed in; the optimizer and the
schedule arrive as factories and are completed in ``configure_optimizers``.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn as nn
from torchmetrics import MeanMetric

from lmlab.callbacks.forward_stats import LogitStats
from lmlab.checkpoint import FORMAT_VERSION, model_spec, tokenizer_spec
from lmlab.errors import InputError
from lmlab.losses import mean_reciprocal_rank, recall_at_k


class LitLM(LogitStats, L.LightningModule):
    """Args:
        model: lmlab's GPT or ``HFCausalLM``.
        loss: a language-modelling, teacher or contrastive loss module.
        optimizer: ``optimizer(model) -> torch.optim.Optimizer``. lmlab's optimizers take the model and
            group its parameters themselves (no weight decay on biases, norms and embeddings; Muon's
            own split); ``lmlab.optim.grouped`` does the same for any torch optimizer.
        scheduler: ``scheduler(optimizer) -> LRScheduler``, stepped every optimizer step; or None.
        compile: run the forward under ``torch.compile``.
        tokenizer: stored in every checkpoint, so a checkpoint alone can decode.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        optimizer: Callable[[nn.Module], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
        compile: bool = False,
        tokenizer=None,
    ):
        super().__init__()
        self.model = model
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.tokenizer = tokenizer
        # compile the forward only, so state-dict keys stay those of the plain model
        self.forward_fn = torch.compile(model.forward) if compile else model.forward
        self.val_loss = MeanMetric()
        self.val_embeddings: list[tuple[torch.Tensor, ...]] = []  # (index, query, document) per pair batch
        self.tokens_seen = 0
        self._restored_rng: dict | None = None

    def forward(self, input_ids, **kwargs):
        return self.model(input_ids, **kwargs)

    def training_step(self, batch: torch.Tensor | dict[str, torch.Tensor], batch_idx: int):
        if isinstance(batch, dict):  # query/document pairs (data=code_pairs): contrastive embedding training
            loss = self.loss(*self.embed_pairs(batch))
            self._log_training(loss, batch["query_ids"].numel() + batch["doc_ids"].numel())
            return loss
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = self.forward_fn(inputs).logits
        teacher = getattr(self.loss, "teacher", None)
        if teacher is None:
            loss = self.loss(logits, targets)
        else:
            with torch.no_grad():
                teacher_logits = teacher(inputs).logits
            loss = self.loss(logits, targets, teacher_logits)
        self.record_logits(logits)
        self._log_training(loss, inputs.numel())
        return loss

    def _log_training(self, loss: torch.Tensor, n_tokens: int) -> None:
        self.tokens_seen += n_tokens * self.trainer.world_size
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        self.log("train/tokens", float(self.tokens_seen), on_step=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, C] float32 embeddings: the mean of the final hidden states over real tokens (mask 1).

        Batches are right-padded and attention is causal, so no real token sees a pad: no attention
        mask is needed (which keeps the flash kernel), only the pooling skips the pads.
        """
        hidden = self.forward_fn(ids, output_hidden=True).hidden.float()
        weights = mask[..., None].to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1)

    def embed_pairs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        queries = self.embed(batch["query_ids"], batch["query_mask"])
        return queries, self.embed(batch["doc_ids"], batch["doc_mask"])

    def validation_step(self, batch: torch.Tensor | dict[str, torch.Tensor], batch_idx: int):
        if isinstance(batch, dict):  # pairs: retrieval is scored over the whole split at the epoch's end
            self.val_embeddings.append((batch["index"], *self.embed_pairs(batch)))
            return
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = self.forward_fn(inputs).logits
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        self.val_loss.update(loss, weight=targets.numel())

    def on_validation_epoch_end(self):
        if self.val_embeddings:
            self._log_retrieval()
            return
        val_loss = self.val_loss.compute()  # token-weighted mean, reduced across ranks
        self.val_loss.reset()
        self.log("val/loss", val_loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(val_loss), sync_dist=False)

    def _log_retrieval(self) -> None:
        """Every validation query against every validation document by cosine similarity (recall@1, MRR),
        and the loss over all validation pairs at once (each other document a negative)."""
        index, queries, documents = (torch.cat(parts) for parts in zip(*self.val_embeddings, strict=True))
        self.val_embeddings.clear()
        if self.trainer.world_size > 1:  # every rank scores all pairs once (samplers may repeat some)
            index, queries, documents = (self.all_gather(x).flatten(0, 1)
                                         for x in (index, queries, documents))
            sorted_index, order = index.sort(stable=True)
            first = torch.ones_like(sorted_index, dtype=torch.bool)
            first[1:] = sorted_index[1:] != sorted_index[:-1]
            queries, documents = queries[order[first]], documents[order[first]]
        scores = nn.functional.normalize(queries, dim=-1) @ nn.functional.normalize(documents, dim=-1).T
        self.log("val/loss", self.loss(queries, documents), prog_bar=True, sync_dist=False)
        self.log("val/recall@1", recall_at_k(scores, k=1), prog_bar=True, sync_dist=False)
        self.log("val/mrr", mean_reciprocal_rank(scores), sync_dist=False)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.model)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise InputError(f"optimizer: the factory returned a {type(optimizer).__name__}; it is called as "
                             "factory(model) and must return a torch.optim.Optimizer")
        self._check_fused_clipping(optimizer)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _check_fused_clipping(self, optimizer: torch.optim.Optimizer) -> None:
        """A fused optimizer unscales fp16 gradients inside its step, after clipping would have run."""
        trainer = self._trainer
        if trainer is None or not trainer.gradient_clip_val or not optimizer.defaults.get("fused"):
            return
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise InputError(
                f"optimizer.fused=true with trainer.precision={trainer.precision} and trainer.gradient_clip_val="
                f"{trainer.gradient_clip_val}: a fused optimizer unscales the gradients inside its step, so they "
                "cannot be clipped first; set optimizer.fused=false or trainer.gradient_clip_val=0"
            )

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Lightning refuses to clip a fused optimizer under any mixed precision; without a loss scaler
        (bf16-mixed) the gradients are already unscaled, so clip them directly."""
        if gradient_clip_val and optimizer.defaults.get("fused") and self.trainer.precision_plugin is not None \
                and getattr(self.trainer.precision_plugin, "scaler", None) is None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                nn.utils.clip_grad_norm_(params, gradient_clip_val)
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
