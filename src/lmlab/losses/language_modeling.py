"""Next-token cross-entropy in log-space, with label smoothing and z-loss."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.arguments import NonNegative, Probability, checked
from lmlab.numerics import at_least_float32


@checked
def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    label_smoothing: Probability = 0.0,
    z_loss: NonNegative = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy over the tokens whose target is not ``ignore_index``.

    ``logits`` [..., V] and ``targets`` [...] (e.g. [B, T, V] and [B, T]). In (at least) float32 and in
    log-space, never ``log(softmax + eps)``, so logits of any magnitude give finite values and
    gradients: the cross-entropy (with label smoothing, which mixes in the uniform distribution) is
    torch's fused ``log_softmax`` + NLL, one pass over the logits forward and one backward (a
    logsumexp, a gather and a mean written out is slower). ``z_loss`` adds
    ``z_loss * mean(logsumexp(logits)^2)`` (PaLM), which keeps the softmax normaliser near 1 and the
    logits from drifting. A batch with no target tokens gives 0, not NaN. No host syncs.
    """
    return _cross_entropy(logits, targets, ignore_index, label_smoothing, z_loss)


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, label_smoothing: float = 0.0,
                   z_loss: float = 0.0) -> torch.Tensor:
    """``cross_entropy`` without the argument checks, for the losses of this package on every step (their
    arguments were checked once, when they were built)."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits shape {tuple(logits.shape)} needs targets of shape {tuple(logits.shape[:-1])}, "
            f"got {tuple(targets.shape)}"
        )
    logits = at_least_float32(logits.reshape(-1, logits.size(-1)))
    targets = targets.reshape(-1)
    keep = targets != ignore_index
    total = F.cross_entropy(logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing,
                            reduction="sum")
    if z_loss:
        total = total + z_loss * (torch.logsumexp(logits, dim=-1).square() * keep).sum()
    return total / keep.sum().clamp_min(1)


class LanguageModelingLoss(nn.Module):
    """``loss=ce``: next-token cross-entropy as a module, ``forward(logits, targets) -> scalar``."""

    batches = "blocks"  # what it trains on (lmlab.tasks)

    @checked
    def __init__(self, label_smoothing: Probability = 0.0, z_loss: NonNegative = 0.0, ignore_index: int = -100):
        super().__init__()
        self.label_smoothing, self.z_loss, self.ignore_index = label_smoothing, z_loss, ignore_index

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _cross_entropy(logits, targets, self.ignore_index, self.label_smoothing, self.z_loss)

    def extra_repr(self) -> str:
        return (
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"ignore_index={self.ignore_index}"
        )
