"""Which device to run on, who started the ranks, waiting for a device before reading a clock (CUDA
runs asynchronously), and a device's peak memory."""

from __future__ import annotations

import os
import resource

import torch

from lmlab.errors import ArgumentError

DEVICES = "auto, cpu, cuda, cuda:<index> or mps"


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; else a device :func:`check_device` finds here."""
    if str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(spec)
    return torch.device(spec)


def check_device(spec: str | torch.device) -> None:
    """That ``spec`` (auto, cpu, cuda, cuda:<index>, mps) names a device this machine and torch build have:
    ArgumentError("device", ...) saying what is missing, before a model is moved (where torch would fail with
    an AssertionError deep in its CUDA initialisation)."""
    spec = str(spec)
    kind, _, index = spec.partition(":")
    if spec != "auto" and (kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit())):
        raise ArgumentError("device", spec, f"must be {DEVICES}")
    if kind == "cuda" and not torch.cuda.is_available():
        if torch.version.cuda is None and torch.version.hip is None:
            problem = f"this torch build has no CUDA (torch {torch.__version__})"
        else:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            problem = "no CUDA device is visible" + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None
                                                    else " (no driver or GPU found)")
        raise ArgumentError("device", spec, f"{problem}; use cpu or auto")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ArgumentError("device", spec, f"this machine has {count} CUDA device{'s' * (count != 1)} "
                            f"(cuda:0 to cuda:{count - 1}); use one of those, cuda or auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ArgumentError("device", spec, "MPS is not available here (it needs macOS on Apple silicon and a torch "
                            "built with MPS); use cpu or auto")


def accelerator_missing(accelerator: str) -> str | None:
    """What this machine lacks for a Lightning accelerator (gpu, cuda, mps, tpu, hpu); None when it has it (or
    for auto and cpu). Lightning would fail later, with an AssertionError or an install hint in a traceback."""
    import importlib.util

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        return "no CUDA device is available on this machine"
    if accelerator == "mps" and not torch.backends.mps.is_available():
        return "MPS is not available here (it needs macOS on Apple silicon)"
    for name, package in (("tpu", "torch_xla"), ("hpu", "lightning_habana")):
        if accelerator == name and importlib.util.find_spec(package) is None:
            return f"{name.upper()}s need the {package} package, which is not installed"
    return None


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
