"""Write a file or a folder so that readers (and a resume after a crash) see the old content or the new,
never half.

A file's content goes to a temporary file in the same folder (same filesystem, so the rename is atomic), is
flushed and fsynced, then renamed over the target; the folder is fsynced so the rename itself survives a
power loss. A temporary file left by a killed writer is removed by the next write. A folder (a cache entry)
is built in a temporary sibling and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

TEMP_MARK = ".tmp-"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """``write(f)`` fills the open temporary file; then it replaces ``path``. OSErrors propagate, with
    ``path`` untouched and no temporary file left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}{TEMP_MARK}*"):
        stale.unlink(missing_ok=True)
    temp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    try:
        with open(temp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` when the block finishes without error.

    If another process finished the same entry first, its copy is kept (same key, same content).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
