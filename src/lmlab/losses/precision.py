"""Losses compute in at least float32: bf16/fp16 logits lose too much in logsumexp and means."""

import torch


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
