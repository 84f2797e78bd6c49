"""Which device to run on, who started the ranks, waiting for a device before reading a clock (CUDA
runs asynchronously), and a device's peak memory."""

from __future__ import annotations

import resource

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


def peak_memory_gb(device: torch.device | str) -> float:
    """Peak allocated CUDA memory; on CPU, the process's peak resident set size.

    On Linux the peak is the memory map's high-water mark (VmHWM): getrusage's ru_maxrss survives exec,
    so a process started by a larger one would report its parent's peak."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        with open("/proc/self/status") as status:
            kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024 / 1e9


def ranks_started_outside() -> bool:
    """Whether a cluster launcher (SLURM's srun, submitit's tasks, torchrun) started this process as one
    rank of several: Lightning's DDP then re-launches nothing."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
