"""Retrieval metrics from a score matrix: row i scores query i against every document.

Ties count against the target document (it ranks below every document scored the same), so a model
whose embeddings have collapsed to one vector scores as badly as it retrieves, not perfectly.
"""

from __future__ import annotations

import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of each query's target document among all documents ([Q, D] scores -> [Q]).

    ``targets[i]`` is the index of query i's relevant document; by default document i (paired data).
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be a [queries, documents] matrix, got shape {tuple(scores.shape)}")
    if targets is None:
        if scores.size(0) > scores.size(1):
            raise ValueError(f"default targets (document i for query i) need as many documents as queries, "
                             f"got scores of shape {tuple(scores.shape)}")
        targets = torch.arange(scores.size(0), device=scores.device)
    target_scores = scores.gather(1, targets[:, None])
    return (scores >= target_scores).sum(dim=1)


def recall_at_k(scores: torch.Tensor, k: int = 1, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of queries whose target document ranks in the top ``k``."""
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    return (target_ranks(scores, targets) <= k).float().mean()


def mean_reciprocal_rank(scores: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over queries of 1 / (rank of the target document)."""
    return target_ranks(scores, targets).float().reciprocal().mean()
