"""Loggers that never prompt or hang: W&B goes online only when a key is configured and its server answers.

Without a network, ``wandb.init`` retries for 90 s and then raises a ``CommError``. So before a W&B run starts
online its server is probed (one TCP connection, ``WANDB_PROBE_TIMEOUT_S``), and ``wandb.init`` is given
``init_timeout=WANDB_INIT_TIMEOUT_S``: in mode auto a server that cannot be reached, or an online start that
fails, means offline with one warning saying why; an explicit ``online`` (the mode, or ``WANDB_MODE=online``) is
a one-line error instead, as is online without a key.
"""

from __future__ import annotations

import csv
import io
import logging
import netrc
import os
import socket
from typing import Literal
from urllib.parse import urlparse

import lightning as L
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from lmlab.arguments import checked
from lmlab.atomic import atomic_write, unwritable
from lmlab.errors import ArgumentError

WandbMode = Literal["auto", "online", "offline", "disabled"]
WANDB_ENV_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")  # what wandb accepts in WANDB_MODE
WANDB_ENV_ALIASES = {"dryrun": "offline", "run": "online"}
WANDB_INIT_TIMEOUT_S = 15
WANDB_PROBE_TIMEOUT_S = 5
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")

log = logging.getLogger(__name__)


def wandb_key_configured() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):  # none, or one that cannot be read (HOME under a file): no key
        return False


@checked
def resolve_wandb_mode(mode: WandbMode) -> str:
    """auto: WANDB_MODE if set, else online with a key and offline without one. A WANDB_MODE that wandb would
    refuse (with a validation traceback, whatever the mode) is an ArgumentError."""
    env = os.environ.get("WANDB_MODE")
    if env is not None and env not in WANDB_ENV_MODES:
        raise ArgumentError("mode", mode, f"the environment's WANDB_MODE={env!r} is not a W&B mode; unset it or set "
                            f"one of {', '.join(WANDB_ENV_MODES)}")
    if mode != "auto":
        return mode
    return WANDB_ENV_ALIASES.get(env, env) or ("online" if wandb_key_configured() else "offline")


def wandb_base_url() -> str:
    """The server ``wandb.init`` talks to: WANDB_BASE_URL, else wandb's default."""
    try:
        from wandb.sdk.lib.urls import DEFAULT_BASE_URL
    except ImportError:  # another wandb version: its older default
        DEFAULT_BASE_URL = "https://api.wandb.ai"
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def unreachable(url: str) -> str | None:
    """Why a TCP connection to the server of ``url`` fails (no such host, refused, no answer within
    ``WANDB_PROBE_TIMEOUT_S``), or None. Behind a proxy the probe would not go through it, so it is skipped."""
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=WANDB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"{parsed.hostname}:{port} cannot be reached ({e.strerror or e or type(e).__name__})"
    return None


def wandb_start_mode(mode: str) -> str:
    """The mode a W&B run starts in: ``resolve_wandb_mode``'s, with online checked before anything is written.
    Online without a key, or with a server that cannot be reached, is an ArgumentError when online was asked
    for (``mode="online"`` or WANDB_MODE=online) and offline with one warning in mode auto."""
    start = resolve_wandb_mode(mode)
    if start != "online":
        return start
    asked = online_asked(mode)
    if not wandb_key_configured():  # auto resolves to online only with a key
        raise ArgumentError("mode", mode, f"{asked}needs a W&B API key and none is configured (WANDB_API_KEY, or "
                            "`wandb login`); use mode=offline to log locally and `wandb sync` later")
    why = unreachable(wandb_base_url())
    if why is None:
        return "online"
    if asked is not None:
        raise ArgumentError("mode", mode, f"{asked}needs the W&B server, and {why}; check the network or "
                            "WANDB_BASE_URL, or use mode=auto (offline when W&B cannot be reached) or mode=offline")
    log.warning("W&B: %s; logging offline (upload later with `wandb sync`)", why)
    return "offline"


def online_asked(mode: str) -> str | None:
    """How an online run was asked for: "" by the mode, "WANDB_MODE=<value> " by the environment; None when
    mode auto chose it because a key is configured (then offline is a fine fallback)."""
    env = os.environ.get("WANDB_MODE")
    return "" if mode == "online" else f"WANDB_MODE={env} " if mode == "auto" and env else None


def wandb_loggers(loggers: L.Trainer | list) -> list[WandbLogger]:
    """The W&B loggers of a trainer (or a list of loggers): the one place that filters them."""
    return [lg for lg in getattr(loggers, "loggers", loggers) if isinstance(lg, WandbLogger)]


WANDB_TAG_LENGTH = 64  # W&B refuses longer tags


@checked
def wandb_logger(save_dir: str, project: str = "lmlab", mode: WandbMode = "auto", name: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, **kwargs) -> WandbLogger:
    """A WandbLogger whose files live in the run directory (``<save_dir>/wandb``), started in the mode
    :func:`wandb_start_mode` decides, within ``WANDB_INIT_TIMEOUT_S``."""
    start = wandb_start_mode(mode)
    if start != "disabled":
        check_wandb_folders(mode)
    os.makedirs(save_dir, exist_ok=True)
    tags = [str(tag)[:WANDB_TAG_LENGTH] for tag in tags or []]
    settings = {"init_timeout": WANDB_INIT_TIMEOUT_S, **(kwargs.pop("settings", None) or {})}
    return BoundedWandbLogger(save_dir=save_dir, project=project, mode=start, name=name, group=group, tags=tags,
                              settings=settings, fall_back_offline=online_asked(mode) is None, **kwargs)


def check_wandb_folders(mode: str) -> None:
    """W&B stages and caches logged files under WANDB_DATA_DIR and WANDB_CACHE_DIR (in HOME by default); one it
    cannot write fails at the end of the run, after training, so it is refused before."""
    from wandb import env

    for variable, folder in ((env.DATA_DIR, env.get_data_dir()), (env.CACHE_DIR, env.get_cache_dir())):
        if (error := unwritable(folder, folder=True)) is not None:
            raise ArgumentError("mode", mode, f"W&B writes to {folder}, which cannot be written ({error.filename}: "
                                f"{error.strerror}); set {variable} (or HOME) to a writable folder, or use "
                                "mode=disabled")


class BoundedWandbLogger(WandbLogger):
    """A WandbLogger whose online start that fails (``wandb.init`` timed out, or the server refused it) falls
    back to offline with one warning (``fall_back_offline``: mode auto) or is an ArgumentError naming why."""

    def __init__(self, fall_back_offline: bool, **kwargs):
        super().__init__(**kwargs)
        self.fall_back_offline = fall_back_offline

    @property
    @rank_zero_experiment
    def experiment(self):
        import wandb

        try:
            return WandbLogger.experiment.fget(self)
        except wandb.errors.Error as e:
            if self._wandb_init.get("mode") != "online":
                raise
            why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            if not self.fall_back_offline:
                raise ArgumentError("mode", "online", f"W&B did not start an online run ({why}); check the network, "
                                    "WANDB_BASE_URL and WANDB_API_KEY, or use mode=offline") from None
            log.warning("W&B did not start an online run (%s); logging offline (upload later with `wandb sync`)", why)
            self._wandb_init["mode"] = "offline"
            wandb.teardown()  # the service still holds the failed online run's id: an offline start would clash
            return WandbLogger.experiment.fget(self)


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
