"""Compute in at least float32: bf16/fp16 lose too much in logsumexp, means, derivatives near saturation
and optimizer coefficients (1 - 1e-4 is 1 in bf16). float64 inputs stay float64."""

import torch

WIDE_DTYPES = (torch.float32, torch.float64)


def at_least_float32_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in WIDE_DTYPES else torch.float32


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in WIDE_DTYPES else x.float()
