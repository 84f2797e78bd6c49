"""A run directory: owned by one run, and its record of itself.

Ownership: a start either resumes the run its directory holds or gets a directory that holds none
(:func:`resume_checkpoint`), and holds the directory's lock while it trains (:mod:`lmlab.cli.run_lock`). The
record: the resolved ``config.yaml`` and ``run.json`` (command line, overrides, git SHA, versions, the W&B run
id, every start of the run and what each changed). Written atomically, and only once every check has passed.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lmlab.atomic import atomic_write_text
from lmlab.cli import CONF_DIR
from lmlab.cli.multirun import in_multirun
from lmlab.cli.run_lock import check_unlocked
from lmlab.cli.user_errors import EXIT_USER_ERROR, one_line, report
from lmlab.errors import InputError

log = logging.getLogger("lmlab")
RUN_FILES = ("run.json", "config.yaml", "metrics.csv", "checkpoints")  # what a run leaves (Hydra's .hydra/ is none)


def where(run_dir: Path) -> str:
    """How messages name a run directory: by the key that set it."""
    return f"hydra.sweep.dir job {run_dir}" if in_multirun() else f"hydra.run.dir={run_dir}"


def held_run(run_dir: Path) -> list[str]:
    """The files of a run that ``run_dir`` holds (an empty folder, such as a mount point made ready, is none)."""
    return [name for name in RUN_FILES if (run_dir / name).exists() and not is_empty_dir(run_dir / name)]


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and next(path.iterdir(), None) is None


def check_directory(run_dir: Path, key: str) -> None:
    """``run_dir`` is a directory, or a path where one can be made (not a file, nor under one)."""
    for path in (run_dir, *run_dir.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == run_dir else f"is under {path}, which is a file"
                raise InputError(f"{key}: {what}, not a directory; choose another directory")
            return


def resume_checkpoint(setting: str | None, run_dir: Path, config: dict | None = None, claim: bool = True) -> str | None:
    """The checkpoint a start resumes from (None: a fresh start), refusing a start that would write into another
    run: a fresh start (``ckpt_path`` unset) into a directory that holds a run, or another run's checkpoint
    resumed into it.

    ``ckpt_path``: "last" is this directory's last.ckpt (which must exist); "auto" resumes it when it exists, else
    starts fresh; a path is a .ckpt file or a run directory (its last.ckpt). "auto" in a directory whose run left
    no last.ckpt (stopped before its first checkpoint) starts that run over when ``config`` is the one it recorded,
    the same command resubmitted (a requeued job, a multirun's failed job), and is refused for another config;
    ``config`` None defers that decision (a check before the config is resolved). ``claim=False`` (the other
    ranks of a distributed run, in rank 0's directory) only finds the checkpoint."""
    key = where(run_dir)
    if claim:
        check_directory(run_dir, key)
        check_unlocked(run_dir, key)
    found, last = held_run(run_dir) if claim else [], run_dir / "checkpoints" / "last.ckpt"
    if setting is None:
        if found:
            raise InputError(f"{key} already holds a run ({', '.join(found)}); resume it with ckpt_path=last (or "
                             "ckpt_path=auto), or start this run in a new directory (without hydra.run.dir, a new "
                             "timestamped one)")
        return None
    if setting == "auto":
        if last.is_file():
            return str(last)
        if found and config is not None:
            check_restart(run_dir, key, config)
        return None
    path = last if setting == "last" else Path(setting).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        hint = " (ckpt_path=last resumes the run in hydra.run.dir: pass hydra.run.dir=<run dir>)"
        raise InputError(f"ckpt_path={setting}: {path} does not exist" + (hint if setting == "last" else ""))
    if found and not path.resolve().is_relative_to(run_dir.resolve()):
        raise InputError(f"ckpt_path={setting}: is another run's checkpoint, and {key} holds a run of its own "
                         f"({', '.join(found)}); resume each run in its own directory, or continue from this "
                         "checkpoint in a new directory")
    return str(path)


def check_restart(run_dir: Path, key: str, config: dict) -> None:
    """``ckpt_path=auto`` without a last.ckpt: start over the same run (same config), refuse another."""
    if any((run_dir / "checkpoints").glob("*.ckpt")):
        raise InputError(f"{key} holds checkpoints but no checkpoints/last.ckpt; resume one with "
                         "ckpt_path=<file>, or start this run in a new directory")
    try:
        recorded = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    except (OSError, ValueError):
        recorded = None
    if not isinstance(recorded, dict) or comparable(recorded) != comparable(config):
        raise InputError(f"{key} holds a run of another config with no checkpoints/last.ckpt to resume; "
                         "ckpt_path=auto restarts only the same run: start this run in a new directory")
    log.warning("%s: the run stopped before its first checkpoint (no checkpoints/last.ckpt); starting it over",
                key)


def comparable(config: dict) -> dict:
    """A config as a start of the same run records it (which checkpoint it resumes is no part of it)."""
    return {k: v for k, v in config.items() if k not in ("ckpt_path", "hydra")}


class ClaimRunDir(Callback):
    """Hydra callback: refuses a single run whose directory is taken (a file, another training's, another run's)
    before Hydra writes its own files there (``.hydra/``, the log), and a sweep directory that is a file; ``train``
    checks again with the resolved config. The other ranks of a distributed run share rank 0's directory and check
    nothing. Hydra turns a callback's exception into a warning and goes on, so the refusal is the entry points'
    one line and exit status here."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if rank_zero_only.rank == 0:
            with exit_on_input_error():
                resume_checkpoint(config.get("ckpt_path"), Path(config.hydra.run.dir).absolute())

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        with exit_on_input_error():
            check_directory(Path(config.hydra.sweep.dir).absolute(), f"hydra.sweep.dir={config.hydra.sweep.dir}")


@contextmanager
def exit_on_input_error() -> Iterator[None]:
    try:
        yield
    except InputError as error:
        report(one_line(str(error)))
        raise SystemExit(EXIT_USER_ERROR) from None


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
