"""The LightningModule: the one place where model, loss, optimizer and schedule meet.

Everything it wires is built by Hydra from config groups and handed in; the optimizer and the
schedule arrive as partials and are completed in ``configure_optimizers``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import lightning as L
import torch
import torch.nn as nn
from torchmetrics import MeanMetric

from lmlab.checkpoint import model_spec, tokenizer_spec
from lmlab.losses import mean_reciprocal_rank, recall_at_k
from lmlab.optim import Muon, muon_param_groups, param_groups


class LitLM(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
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
        # set by the stability callback before a step whose forward statistics it will log
        self.collect_forward_stats = False
        self.forward_stats: dict[str, torch.Tensor] = {}

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
        if self.collect_forward_stats:
            with torch.no_grad():
                lse = torch.logsumexp(logits.float(), dim=-1)
                self.forward_stats = {"max_logit": logits.detach().max().float(), "z_loss": lse.pow(2).mean()}
        self._log_training(loss, inputs.numel())
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
            self.log("train/lr", trainer.optimizers[0].param_groups[0]["lr"], on_step=True)

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
        factory = self._without_fused_if_clipping_under_amp(self.optimizer_factory)
        weight_decay = getattr(factory, "keywords", {}).get("weight_decay", 0.0)
        groups = muon_param_groups if _builds(factory, Muon) else param_groups
        optimizer = factory(groups(self.model, weight_decay))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _without_fused_if_clipping_under_amp(self, factory: Callable) -> Callable:
        """Lightning refuses to clip under AMP when a fused optimizer unscales internally; use foreach."""
        trainer = self._trainer
        mixed = trainer is not None and "mixed" in str(trainer.precision)
        if not (mixed and trainer.gradient_clip_val and getattr(factory, "keywords", {}).get("fused")):
            return factory
        warnings.warn("fused optimizer + AMP + gradient clipping: using the foreach implementation", stacklevel=2)
        return functools.partial(factory, fused=False, foreach=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Make every checkpoint self-describing: enough to rebuild model and tokenizer alone."""
        checkpoint["lmlab"] = {
            "model": model_spec(self.model),
            "tokenizer": tokenizer_spec(self.tokenizer) if self.tokenizer is not None else None,
            "tokens_seen": self.tokens_seen,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokens_seen = checkpoint.get("lmlab", {}).get("tokens_seen", 0)


def _builds(factory: Callable, cls: type) -> bool:
    func = getattr(factory, "func", factory)  # Hydra's _partial_ gives a functools.partial
    return isinstance(func, type) and issubclass(func, cls)
