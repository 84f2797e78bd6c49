"""What a run trains the model to do (config group ``task``): the batches a task takes, the loss it computes on
them and what it reports at validation. :class:`~lmlab.module.LitLM` holds one and logs what it returns.

Each task names the batches it takes (``batches``), as the DataModules and losses do, so a config whose task,
data and loss disagree is refused before any work (lmlab.config.rules).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from torchmetrics import MeanMetric

from lmlab.losses import mean_reciprocal_rank, recall_at_k
from lmlab.losses.teacher import UsesTeacher

Forward = Callable[..., object]  # the model's forward (compiled or not): ids -> CausalLMOutput


class LanguageModeling(nn.Module):
    """Next-token prediction on token blocks [B, T + 1]: inputs ``x[:, :-1]``, targets ``x[:, 1:]``. A loss with
    a teacher (:class:`~lmlab.losses.teacher.UsesTeacher`) gets the teacher's logits on the same inputs.
    Validation: the token-weighted mean cross-entropy ``val/loss`` (reduced across ranks) and ``val/ppl``."""

    batches = "blocks"

    def __init__(self):
        super().__init__()
        self.val_loss = MeanMetric()

    def training_loss(self, forward: Forward, loss: nn.Module, batch: torch.Tensor):
        """(loss, logits, tokens in the batch)."""
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = forward(inputs).logits
        if isinstance(loss, UsesTeacher):
            with torch.no_grad():
                teacher_logits = loss.teacher(inputs).logits
            return loss(logits, targets, teacher_logits), logits, inputs.numel()
        return loss(logits, targets), logits, inputs.numel()

    def validation_step(self, forward: Forward, batch: torch.Tensor) -> None:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = forward(inputs).logits
        nll = nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        self.val_loss.update(nll, weight=targets.numel())

    def validation_metrics(self, loss: nn.Module, all_gather: Callable | None) -> dict[str, torch.Tensor]:
        val_loss = self.val_loss.compute()
        self.val_loss.reset()
        return {"val/loss": val_loss, "val/ppl": torch.exp(val_loss)}


class PairEmbedding(nn.Module):
    """Embeddings trained on query/document pairs (``{query_ids, query_mask, doc_ids, doc_mask, index}``): the
    mean of the final hidden states over real tokens, a contrastive loss (InfoNCE) between the two sides.
    Validation scores every validation query against every validation document: ``val/recall@1``,
    ``val/mrr``, and the loss over all validation pairs at once (each other document a negative)."""

    batches = "pairs"

    def __init__(self):
        super().__init__()
        self.embeddings: list[tuple[torch.Tensor, ...]] = []  # (index, query, document) per validation batch

    @staticmethod
    def embed(forward: Forward, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, C] float32 embeddings: the mean of the final hidden states over real tokens (mask 1).

        Batches are right-padded and attention is causal, so no real token sees a pad: no attention mask is
        needed (which keeps the flash kernel), only the pooling skips the pads."""
        hidden = forward(ids, output_hidden=True).hidden.float()
        weights = mask[..., None].to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1)

    def embed_pairs(self, forward: Forward, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed(forward, batch["query_ids"], batch["query_mask"]), self.embed(
            forward, batch["doc_ids"], batch["doc_mask"])

    def training_loss(self, forward: Forward, loss: nn.Module, batch: dict):
        """(loss, no logits, tokens in the batch)."""
        return loss(*self.embed_pairs(forward, batch)), None, batch["query_ids"].numel() + batch["doc_ids"].numel()

    def validation_step(self, forward: Forward, batch: dict) -> None:
        self.embeddings.append((batch["index"], *self.embed_pairs(forward, batch)))

    def validation_metrics(self, loss: nn.Module, all_gather: Callable | None) -> dict[str, torch.Tensor]:
        """``all_gather``: the ranks' tensors stacked, when several ranks validate (None: one)."""
        index, queries, documents = (torch.cat(parts) for parts in zip(*self.embeddings, strict=True))
        self.embeddings.clear()
        if all_gather is not None:  # every rank scores all pairs once (samplers may repeat some)
            index, queries, documents = (all_gather(x).flatten(0, 1) for x in (index, queries, documents))
            sorted_index, order = index.sort(stable=True)
            first = torch.ones_like(sorted_index, dtype=torch.bool)
            first[1:] = sorted_index[1:] != sorted_index[:-1]
            queries, documents = queries[order[first]], documents[order[first]]
        scores = nn.functional.normalize(queries, dim=-1) @ nn.functional.normalize(documents, dim=-1).T
        return {"val/loss": loss(queries, documents), "val/recall@1": recall_at_k(scores, k=1),
                "val/mrr": mean_reciprocal_rank(scores)}
