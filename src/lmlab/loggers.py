"""Loggers that never prompt or hang: W&B goes online only when a key is configured."""

from __future__ import annotations

import csv
import netrc
import os
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_key_configured() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """auto: WANDB_MODE if set, else online with a key and offline without one."""
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.wandb.mode={mode!r}; allowed: {', '.join(WANDB_MODES)}")
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if wandb_key_configured() else "offline")


WANDB_TAG_LENGTH = 64  # W&B refuses longer tags


def wandb_logger(save_dir: str, project: str = "lmlab", mode: str = "auto", tags=None, **kwargs) -> WandbLogger:
    """A WandbLogger whose files live in the run directory (``<save_dir>/wandb``)."""
    os.makedirs(save_dir, exist_ok=True)
    tags = [str(tag)[:WANDB_TAG_LENGTH] for tag in tags or []]
    return WandbLogger(save_dir=save_dir, project=project, mode=resolve_wandb_mode(mode), tags=tags, **kwargs)


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Lightning deletes an existing metrics.csv here; keep it and continue under its header
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class AppendingCSVLogger(CSVLogger):
    """``<save_dir>/metrics.csv`` that a resumed run appends to, so no logged row is lost."""

    def __init__(self, save_dir: str):
        super().__init__(save_dir=save_dir, name="", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
