"""Next-token cross-entropy in log-space, with label smoothing and z-loss."""

from __future__ import annotations

import torch
import torch.nn as nn

from lmlab.numerics import at_least_float32


def _check_options(label_smoothing: float, z_loss: float, prefix: str = "") -> None:
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{prefix}label_smoothing={label_smoothing} must be in [0, 1]")
    if z_loss < 0.0:
        raise ValueError(f"{prefix}z_loss={z_loss} must be >= 0")


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy over the tokens whose target is not ``ignore_index``.

    ``logits`` [..., V] and ``targets`` [...] (e.g. [B, T, V] and [B, T]). Everything goes through
    ``logsumexp`` in (at least) float32, never ``log(softmax + eps)``, so logits of any magnitude give
    finite values and gradients. Label smoothing mixes in the uniform distribution exactly as
    ``F.cross_entropy`` does; ``z_loss`` adds ``z_loss * mean(logsumexp(logits)^2)`` (PaLM), which keeps
    the softmax normaliser near 1 and the logits from drifting. A batch with no target tokens gives 0,
    not NaN. No host syncs.
    """
    _check_options(label_smoothing, z_loss)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits shape {tuple(logits.shape)} needs targets of shape {tuple(logits.shape[:-1])}, "
            f"got {tuple(targets.shape)}"
        )
    logits = at_least_float32(logits.reshape(-1, logits.size(-1)))
    targets = targets.reshape(-1)
    keep = targets != ignore_index
    log_normaliser = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(1, torch.where(keep, targets, 0)[:, None]).squeeze(1)
    per_token = log_normaliser - target_logit  # -log p(target)
    if label_smoothing:
        # -mean_v log p(v) = logsumexp - mean(logits)
        uniform = log_normaliser - logits.mean(dim=-1)
        per_token = (1.0 - label_smoothing) * per_token + label_smoothing * uniform
    if z_loss:
        per_token = per_token + z_loss * log_normaliser.square()
    weight = keep.to(per_token.dtype)
    return (per_token * weight).sum() / weight.sum().clamp_min(1.0)


class LanguageModelingLoss(nn.Module):
    """``loss=ce``: next-token cross-entropy as a module, ``forward(logits, targets) -> scalar``."""

    def __init__(self, label_smoothing: float = 0.0, z_loss: float = 0.0, ignore_index: int = -100):
        super().__init__()
        _check_options(label_smoothing, z_loss, prefix="loss.")
        self.label_smoothing, self.z_loss, self.ignore_index = label_smoothing, z_loss, ignore_index

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, targets, self.ignore_index, self.label_smoothing, self.z_loss)

    def extra_repr(self) -> str:
        return (
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"ignore_index={self.ignore_index}"
        )
