"""Write a file or a folder so that readers (and a resume after a crash) see the old content or the new,
never half.

A file's content goes to a temporary file in the same folder (same filesystem, so the rename is atomic), is
flushed and fsynced, then renamed over the target; the folder is fsynced so the rename itself survives a
power loss. A temporary file left by a killed writer is removed by the next write. A folder (a cache entry)
is built in a temporary sibling and renamed into place when complete. An OSError names the path the caller
asked for, never the temporary one.

:func:`unwritable` says, before any work, why a path cannot be written (as the OS would), without writing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

TEMP_MARK = ".tmp-"
# OSErrors the filesystem causes, not the program: a path through a regular file, a read-only or full disk,
# permission denied, a name too long, too many open files
FILESYSTEM_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                               errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EFBIG, errno.EMFILE, errno.ENFILE})


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """``write(f)`` fills the open temporary file; then it replaces ``path``. OSErrors propagate, with
    ``path`` untouched and no temporary file left behind."""
    path = Path(path)
    temp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    with naming(path, temp):
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}{TEMP_MARK}*"):
            stale.unlink(missing_ok=True)
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


@contextlib.contextmanager
def naming(path: Path, *internal: Path) -> Iterator[None]:
    """An OSError about one of the ``internal`` (temporary) paths, or about no path (a full disk while writing), is
    raised as the same error about ``path``."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno not in FILESYSTEM_ERRNOS:
            raise  # not the filesystem's (a ConnectionError is an OSError too)
        if e.filename is not None and not any(str(e.filename).startswith(str(p)) for p in internal):
            raise
        raise type(e)(e.errno, e.strerror, str(path)) from e


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` when the block finishes without error.

    If another process finished the same entry first, its copy is kept (same key, same content).
    """
    prefix = f".{final.name}.tmp-"
    with naming(final, final.parent / prefix):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    try:
        yield tmp  # the caller's errors stay as they are
        with naming(final, tmp):
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def unwritable(path: str | Path, folder: bool = False) -> OSError | None:
    """Why ``path`` (a file to write; with ``folder``, a folder to create or write in) cannot be written, as the
    OSError writing would raise, found without writing anything; or None. Root passes permission bits but not
    a read-only filesystem or a path through a regular file; what this cannot see (e.g. /sys refusing root)
    still fails when written, with the same kind of error."""
    path = Path(path).expanduser().absolute()
    if not folder and path.is_dir():
        return IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    existing = path if folder else path.parent
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EROFS if os.statvfs(existing).f_flag & os.ST_RDONLY else errno.EACCES
        return OSError(code, os.strerror(code), str(existing))
    return None
