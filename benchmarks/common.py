"""What the benchmarks share: the device they run on, composing a train.py config, timing, JSON output."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from pathlib import Path

import torch

from lmlab.devices import resolve_device

DEVICE = resolve_device()  # every benchmark runs on the GPU when there is one


def device_info() -> dict:
    """The device, its name and the torch version: the header of every result."""
    cuda = DEVICE.type == "cuda"
    return dict(device=DEVICE.type,
                device_name=torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
                threads=torch.get_num_threads(), torch=torch.__version__)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def compose_train(overrides: list[str], run_dir: Path):
    """The config ``python train.py <overrides>`` would run, with its run directory at ``run_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from lmlab.cli import CONF_DIR

    os.environ.setdefault("WANDB_MODE", "offline")  # benchmarks never reach for the network
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_quietly(main):
    """``main(argv, result)`` fills ``result`` as it goes; everything it prints (Lightning's tables,
    progress bars) goes to stderr, so that stdout carries only the one JSON object: ``result``, also
    when a time limit interrupts it (SIGINT: then with ``"interrupted": true`` and what was measured)."""
    def wrapped(argv: list[str] | None = None) -> dict:
        result = {}
        try:
            with contextlib.redirect_stdout(sys.stderr):
                main(argv, result)
        except KeyboardInterrupt:
            result["interrupted"] = True
        print(json.dumps(result, indent=1))
        return result

    return wrapped
