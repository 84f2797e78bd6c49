"""Which device to run on, who started the ranks, and waiting for a device before reading a clock (CUDA
runs asynchronously)."""

from __future__ import annotations

import torch


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; anything else as torch spells it."""
    if str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels, so a wall-clock reading covers them; a no-op off CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ranks_started_outside() -> bool:
    """Whether a cluster launcher (SLURM's srun, submitit's tasks, torchrun) started this process as one
    rank of several: Lightning's DDP then re-launches nothing."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
