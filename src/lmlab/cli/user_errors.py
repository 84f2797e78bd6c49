"""How the command-line entry points show a user's mistake: one line on stderr and exit status 2.

A user's mistake is an :class:`~lmlab.errors.InputError` (``CheckpointError`` included), also when Hydra's
``instantiate`` wrapped it in an ``InstantiationException``; an error of Hydra or OmegaConf composing the
config (an unknown option, a malformed override, a key not in the config); a ``???`` value left
unset or an interpolation that cannot be resolved; and an OSError that the filesystem, not lmlab, causes (a
path through a regular file, a read-only or full disk, permission denied: ``FILESYSTEM_ERRNOS``), shown as
the path and the OS's words. Anything else is a bug and keeps its traceback.
``HYDRA_FULL_ERROR=1`` shows the full traceback of a user's mistake too, as Hydra does.

Hydra prints its own composition errors over several lines and exits with 1; with ``HYDRA_FULL_ERROR=1``
it raises them instead, so :func:`run_hydra_app` sets it while Hydra composes and the task wrapper puts the
user's setting back as soon as the job starts (a bug in the job is then reported as Hydra always does).
In a multirun a job's error is raised as it is, so the sweep's failure handling sees its type.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException, OverrideParseException
from hydra.types import RunMode
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

from lmlab.atomic import FILESYSTEM_ERRNOS, unwritable
from lmlab.errors import InputError

EXIT_USER_ERROR = 2
FULL_ERROR = "HYDRA_FULL_ERROR"
_user_full_error: str | None = None  # the user's own HYDRA_FULL_ERROR while run_hydra_app overrides it
_task_started = False  # an OSError before the task starts is Hydra's, making the run directory


def user_error_message(error: BaseException, composing: bool = False) -> str | None:
    """The one line to show for a user's mistake, or None for a bug. ``composing``: the error came from
    Hydra composing the config (every Hydra and OmegaConf error there is the user's)."""
    cause = error
    while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, InputError):
        return one_line(str(cause))
    if isinstance(cause, OSError) and cause.errno in FILESYSTEM_ERRNOS and cause.filename is not None:
        return filesystem_message(cause)
    if isinstance(cause, MissingMandatoryValue):
        key = getattr(cause, "full_key", None) or "a key"
        return f"{key}=???: is required; give {key}=<value> on the command line"
    if isinstance(cause, OverrideParseException) and composing:
        return f"{cause.override}: {one_line(str(cause))}"
    if isinstance(cause, InterpolationResolutionError) or (
            composing and isinstance(cause, HydraException | OmegaConfBaseException)):
        return one_line(str(cause))
    return None


def filesystem_message(error: OSError) -> str:
    """``cannot use <path>: <the OS's words>``: the path the OS refused (the caller's, not a temporary one:
    lmlab.atomic names its target)."""
    where = str(error.filename) + (f" or {error.filename2}" if error.filename2 else "")
    return f"cannot use {where}: {error.strerror}"


def check_writable(flag: str, path: str | None, folder: bool = False) -> None:
    """Before any work: the file (``folder``: the folder) that ``flag=path`` names can be written."""
    if path is not None and (error := unwritable(path, folder)) is not None:
        raise InputError(f"{flag}={path}: cannot be written ({error.filename}: {error.strerror})")


@contextmanager
def writing(flag: str, path: str | None) -> Iterator[None]:
    """An OSError about ``path`` (the file, a folder above it, what is under it, or no path: a full disk) as
    one line naming ``flag=path``; what fails later than :func:`check_writable` can see (/sys refusing root, a
    disk filling up)."""
    try:
        yield
    except OSError as e:
        target = Path(str(path)).expanduser().absolute()
        about = Path(str(e.filename)).absolute() if e.filename is not None else target
        if path is None or not (about.is_relative_to(target) or target.is_relative_to(about)):
            raise
        raise InputError(f"{flag}={path}: cannot be written ({about}: {e.strerror})") from e


def one_line(message: str) -> str:
    """A multi-line message (Hydra's option lists, OmegaConf's key/type footer) joined into one line; Hydra's
    config search path (where it looked, not what is wrong) is left out."""
    parts: list[str] = []
    for line in message.splitlines():
        text = line.strip()
        if text.startswith("Config search path"):
            break
        if not text or text.startswith("object_type="):
            continue
        if line.startswith("\t") and parts:  # an item of the list the previous line announced
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + text
        else:
            parts.append(text)
    return "; ".join(parts)


def report(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)
    sys.stderr.flush()


@contextmanager
def one_line_errors(composing: bool = True) -> Iterator[None]:
    """For argparse commands: a user's mistake as one line on stderr and exit status 2."""
    try:
        yield
    except Exception as e:
        message = user_error_message(e, composing)
        if message is None or os.environ.get(FULL_ERROR) == "1":
            raise
        report(message)
        raise SystemExit(EXIT_USER_ERROR) from None


def stop(error: InputError) -> NoReturn:
    """A user's mistake found where Hydra catches every Exception (its callbacks, e.g. a multirun's check of its
    jobs): the one line and exit status 2 (with the user's HYDRA_FULL_ERROR=1, the traceback too)."""
    if _user_full_error == "1":
        traceback.print_exception(error)
    report(one_line(str(error)))
    raise SystemExit(EXIT_USER_ERROR)


def run_hydra_app(app: Callable[[], Any]) -> Any:
    """Run a ``@hydra.main`` app (whose task is wrapped by :func:`hydra_task`) with composition errors as one
    line and exit status 2."""
    global _user_full_error
    _user_full_error = os.environ.get(FULL_ERROR)
    os.environ[FULL_ERROR] = "1"
    with one_line_errors(composing=True):
        try:
            return app()
        except OSError as e:
            if _task_started or e.filename is None:
                raise
            raise InputError(run_dir_message(e)) from e
        finally:
            _restore_full_error()


def run_dir_message(error: OSError) -> str:
    what = "a file is in the way" if isinstance(error, FileExistsError) else error.strerror
    return (f"the run directory cannot be created ({error.filename}: {what}); choose a writable hydra.run.dir or "
            "paths.log_dir (hydra.sweep.dir in a multirun)")


def _restore_full_error() -> None:
    if _user_full_error is None:
        os.environ.pop(FULL_ERROR, None)
    else:
        os.environ[FULL_ERROR] = _user_full_error


def hydra_task(task: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A Hydra task whose user mistakes end a single run as one line (exit 2); in a multirun they are raised."""

    @functools.wraps(task)
    def run(cfg):
        global _task_started
        _task_started = True
        _restore_full_error()
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        if multirun:
            return task(cfg)
        with one_line_errors(composing=False):
            return task(cfg)

    return run
