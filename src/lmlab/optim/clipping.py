"""Gradient clipping (the seed's "clip the gradient norm"): how gradients are clipped and by how much.

Clipping is configured on the Trainer (``gradient_clip_val``, ``gradient_clip_algorithm``) and runs after
the gradients are unscaled (Lightning's order under mixed precision). ``LitLM`` clips through
:func:`clip_gradients` where Lightning cannot (a fused optimizer under bf16), and the stability telemetry
reports the factor :func:`clip_coefficient` gives, without a host sync.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

EPS = 1e-6  # what torch's clip_grad_norm_ adds to the norm


def clip_gradients(parameters: Iterable[torch.Tensor], max_value: float, algorithm: str = "norm") -> None:
    """In place: scale all gradients so their total norm is at most ``max_value`` ("norm"), or clamp each
    gradient value to [-max_value, max_value] ("value")."""
    parameters = list(parameters)
    if algorithm == "value":
        nn.utils.clip_grad_value_(parameters, max_value)
    else:
        nn.utils.clip_grad_norm_(parameters, max_value)


def clip_coefficient(grad_norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """The factor norm clipping multiplies every gradient by: min(1, max_norm / (norm + 1e-6)), on the device."""
    return (max_norm / (grad_norm + EPS)).clamp(max=1.0)


def clips(max_value: float | None) -> bool:
    """Whether a Trainer setting clips at all (Lightning ignores None, 0 and below)."""
    return max_value is not None and max_value > 0
