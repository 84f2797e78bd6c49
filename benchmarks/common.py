"""What the benchmarks share: the device they run on, `python train.py` run as a user runs it, a run's config,
timing, JSON output.

Benchmarks import nothing from ``lmlab.cli``: a training run is ``python train.py <overrides>`` in a fresh
process, measured by callbacks of a benchmark module added with ``+callbacks.<name>._target_=<module>.<Class>``
(``benchmarks/`` is on the child's PYTHONPATH) that write what they measure as JSON into the run directory;
objects a benchmark needs in its own process are built from a config file (conf/ at the repository root, or a
run's resolved config.yaml).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lmlab.devices import resolve_device

DEVICE = resolve_device()  # every benchmark runs on the GPU when there is one
ROOT = Path(__file__).resolve().parents[1]  # the repository root: train.py and conf/
CONF = ROOT / "conf"
BENCHMARKS = Path(__file__).resolve().parent


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


def child_env(**extra: str) -> dict:
    """The environment of a `python train.py` child: benchmarks/ importable (its callbacks), W&B offline."""
    path = os.pathsep.join(p for p in (str(BENCHMARKS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), **extra}


def callback_overrides(callbacks: dict[str, dict]) -> list[str]:
    """``{"step_clock": {"_target_": "train_step.StepClock", "steps": 20}}`` as ``+callbacks.step_clock...``."""
    return [f"+callbacks.{name}.{key}={value}" for name, node in callbacks.items() for key, value in node.items()]


def train_py(overrides: list[str], run_dir: Path, callbacks: dict[str, dict] | None = None,
             cwd: Path | None = None, **env: str) -> dict:
    """``python train.py <overrides> hydra.run.dir=<run_dir>`` in a fresh process, with benchmark ``callbacks``.
    -> wall seconds from launch to exit, the child's CPU seconds, the launch's wall-clock time (``time.time()``, to
    compare with the child's own clock readings) and its stderr's tail; raises when it fails."""
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}",
           *callback_overrides(callbacks or {})]
    before, started = os.times(), time.time()
    launched = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=child_env(**env))
    seconds = time.perf_counter() - launched
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = after.children_user + after.children_system - before.children_user - before.children_system
    return dict(seconds=seconds, cpu_seconds=cpu, started=started, stderr=proc.stderr[-2000:])


def read_json(run_dir: Path, name: str) -> dict:
    """What a benchmark callback wrote into the run directory as ``<name>.json``."""
    path = run_dir / f"{name}.json"
    if not path.is_file():
        raise RuntimeError(f"{path} was not written: the run ended before its callback measured")
    return json.loads(path.read_text())


def write_json(trainer, name: str, value: dict) -> None:
    """A benchmark callback's measurement, as ``<run dir>/<name>.json`` (the trainer's default_root_dir)."""
    Path(trainer.default_root_dir, f"{name}.json").write_text(json.dumps(value))


def train_config(overrides: list[str], run_dir: Path, groups=("data", "model", "optimizer", "sched", "trainer",
                                                               "compile", "seed")) -> DictConfig:
    """The config ``python train.py <overrides>`` composes (``--cfg job``: nothing runs), with ``groups``
    resolved and the run directory at ``run_dir``: what a benchmark builds objects from in its own process."""
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, "--cfg", "job"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    cfg = OmegaConf.create(proc.stdout)
    cfg.paths.output_dir = str(run_dir)  # ${hydra:runtime.output_dir}, which only a running app knows
    resolved = {}
    for group in groups:
        node = cfg[group]
        resolved[group] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return OmegaConf.create(resolved)


def run_config(run_dir: Path) -> DictConfig:
    """A finished run's resolved config.yaml (what ``python train.py`` recorded)."""
    return OmegaConf.load(run_dir / "config.yaml")


def shipped_model_node(name: str, vocab_size: int, overrides: list[str] = ()) -> DictConfig:
    """conf/model/<name>.yaml with its vocabulary and ``key=value`` overrides: a node to instantiate."""
    node = OmegaConf.load(CONF / "model" / f"{name}.yaml")
    node.vocab_size = vocab_size
    return OmegaConf.merge(node, OmegaConf.from_dotlist(list(overrides)))


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
