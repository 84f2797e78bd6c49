"""InfoNCE with in-batch negatives in its cross-entropy form: a function and ``loss=contrastive``'s module."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.arguments import Positive, checked
from lmlab.errors import ArgumentError
from lmlab.losses.language_modeling import _cross_entropy
from lmlab.numerics import at_least_float32


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` should match row i of ``b`` against every other row.

    ``a``, ``b`` are [N, D] embeddings, compared by cosine similarity / temperature. The loss is the
    cross-entropy of the similarity matrix against its diagonal, averaged over both directions
    (a -> b and b -> a, as in CLIP); never ``exp(similarity)`` divided by a sum of exps.
    """
    if not temperature > 0:
        raise ArgumentError("temperature", temperature, "must be a number > 0")
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"info_nce needs two [N, D] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a, b = F.normalize(at_least_float32(a), dim=-1), F.normalize(at_least_float32(b), dim=-1)
    similarity = a @ b.T / temperature
    labels = torch.arange(a.size(0), device=a.device)
    return 0.5 * (_cross_entropy(similarity, labels) + _cross_entropy(similarity.T, labels))


class InfoNCELoss(nn.Module):
    """``loss=contrastive``: :func:`info_nce` as a module, ``forward(a, b) -> scalar`` on [N, D] embeddings.

    0.05 is SimCSE's temperature; lower is sharper (harder negatives weigh more).
    """

    batches = "pairs"  # what it trains on (lmlab.tasks)

    @checked
    def __init__(self, temperature: Positive = 0.05):
        super().__init__()
        self.temperature = temperature

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return info_nce(a, b, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
