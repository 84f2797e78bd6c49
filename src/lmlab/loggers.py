"""Loggers that never prompt or hang: W&B goes online only when a key is configured."""

from __future__ import annotations

import csv
import io
import netrc
import os
from typing import Literal
from urllib.parse import urlparse

import lightning as L
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from lmlab.arguments import checked
from lmlab.atomic import atomic_write

WandbMode = Literal["auto", "online", "offline", "disabled"]


def wandb_key_configured() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


@checked
def resolve_wandb_mode(mode: WandbMode) -> str:
    """auto: WANDB_MODE if set, else online with a key and offline without one."""
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if wandb_key_configured() else "offline")


def wandb_loggers(loggers: L.Trainer | list) -> list[WandbLogger]:
    """The W&B loggers of a trainer (or a list of loggers): the one place that filters them."""
    return [lg for lg in getattr(loggers, "loggers", loggers) if isinstance(lg, WandbLogger)]


WANDB_TAG_LENGTH = 64  # W&B refuses longer tags


@checked
def wandb_logger(save_dir: str, project: str = "lmlab", mode: WandbMode = "auto", name: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, **kwargs) -> WandbLogger:
    """A WandbLogger whose files live in the run directory (``<save_dir>/wandb``)."""
    os.makedirs(save_dir, exist_ok=True)
    tags = [str(tag)[:WANDB_TAG_LENGTH] for tag in tags or []]
    return WandbLogger(save_dir=save_dir, project=project, mode=resolve_wandb_mode(mode), name=name, group=group,
                       tags=tags, **kwargs)


class _ResumableWriter(ExperimentWriter):
    """Lightning's CSV writer, made safe to resume and to kill: an existing file is kept (Lightning
    deletes it), rows logged after the checkpoint a run resumes from are dropped (the resumed run logs
    those steps again), and a header change rewrites the file atomically instead of in place."""

    def __init__(self, log_dir: str, resume_step: int | None):
        self.resume_step = resume_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        header, rows = read_csv_rows(self.metrics_file_path)
        self.metrics_keys = header
        if self.resume_step is not None:
            self._write_all(header, [r for r in rows if not r.get("step") or int(float(r["step"])) < self.resume_step])

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        self._write_all(fieldnames, read_csv_rows(self.metrics_file_path)[1])

    def _write_all(self, fieldnames: list[str], rows: list[dict]) -> None:
        def write(f):
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
            f.write(text.getvalue().encode())

        atomic_write(self.metrics_file_path, write)


def read_csv_rows(path: str) -> tuple[list[str], list[dict]]:
    """(header, complete rows); a last line cut short by a kill mid-append is left out."""
    with open(path, newline="") as f:
        text = f.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


class AppendingCSVLogger(CSVLogger):
    """``<save_dir>/metrics.csv``, flushed at every logging step so a killed run loses nothing it had
    logged. ``resume_step``: the optimizer step of the checkpoint a run resumes from (0: starting over);
    rows from that step on are dropped once, so every step appears once. None: keep every row."""

    def __init__(self, save_dir: str, resume_step: int | None = None):
        super().__init__(save_dir=save_dir, name="", version="", flush_logs_every_n_steps=1)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _ResumableWriter(self.log_dir, self.resume_step)
        return self._experiment
