"""Reductions across ranks that stay on the device, for telemetry taken at every step."""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    """Mean or max over ranks as a device op: no barrier, so no host sync (Lightning's reduce has one)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return out if op == "max" else out / dist.get_world_size()
