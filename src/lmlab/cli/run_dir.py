"""A run directory's record of itself: the resolved ``config.yaml`` and ``run.json`` (command line, overrides,
git SHA, versions, the W&B run id, every start of the run). Written atomically, and only once every check
has passed."""

from __future__ import annotations

import json
import logging
import secrets
import string
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lmlab.atomic import atomic_write_text
from lmlab.cli import CONF_DIR
from lmlab.errors import InputError

log = logging.getLogger("lmlab")


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CONF_DIR, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_info(run_dir: Path, resume_step: int | None) -> dict:
    """This start's provenance, and the W&B run id: a resumed run keeps its id (read from its run.json), so the
    W&B run continues across interruptions instead of starting a new one."""
    previous = read_run_json(run_dir) if resume_step is not None else {}
    command, started = " ".join([Path(sys.executable).name, *sys.argv]), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    start = {"started": started, "command": command, "from_step": resume_step or 0}
    return {
        "command": command,
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "git_sha": git_sha(),
        "started": started,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "wandb_id": previous.get("wandb_id") or new_run_id(),
        "starts": [*previous.get("starts", []), start],
    }


def read_run_json(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; starting a new W&B run", path)
        return {}


def new_run_id() -> str:
    """8 lowercase letters and digits, as W&B's ids (from the OS, so no seeded RNG is consumed)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def record_run(run_dir: Path, cfg: DictConfig, info: dict) -> None:
    """config.yaml and run.json: the run's first writes (rank 0)."""
    if rank_zero_only.rank != 0:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2))
    except OSError as e:
        raise InputError(f"hydra.run.dir={run_dir} cannot be written ({e.strerror}); choose a writable "
                         "folder (hydra.run.dir=... or paths.log_dir=...)") from e
