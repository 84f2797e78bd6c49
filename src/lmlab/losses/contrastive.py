"""InfoNCE with in-batch negatives, in its cross-entropy form."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.losses.language_modeling import cross_entropy
from lmlab.losses.precision import at_least_float32


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` should match row i of ``b`` against every other row.

    ``a``, ``b`` are [N, D] embeddings, compared by cosine similarity / temperature. The loss is the
    cross-entropy of the similarity matrix against its diagonal, averaged over both directions
    (a -> b and b -> a, as in CLIP); never ``exp(similarity)`` divided by a sum of exps.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"info_nce needs two [N, D] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a, b = F.normalize(at_least_float32(a), dim=-1), F.normalize(at_least_float32(b), dim=-1)
    similarity = a @ b.T / temperature
    labels = torch.arange(a.size(0), device=a.device)
    return 0.5 * (cross_entropy(similarity, labels) + cross_entropy(similarity.T, labels))
