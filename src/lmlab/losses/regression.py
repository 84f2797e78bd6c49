"""Mean squared error, e.g. for matching a teacher's logits."""

from __future__ import annotations

import torch

from lmlab.numerics import at_least_float32


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of ``(pred - target)^2`` in float32; shapes must match exactly (no silent broadcasting)."""
    if pred.shape != target.shape:
        raise ValueError(f"mse: pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    return (at_least_float32(pred) - at_least_float32(target)).square().mean()
