"""Cache entries (tokenizer, packed tokens, pairs): a directory named by a hash of everything that determines its
content, written whole by :func:`lmlab.atomic.atomic_directory`, with a manifest of its files' sizes and checksums.

A cache outlives the runs that wrote it: a disk fills up, a copy is cut short, someone edits a file. So an entry
is verified before it is used and rebuilt, with one warning naming the file and what is wrong, when it is damaged
(an entry without a manifest, written by an older lmlab, counts as damaged). What is verified when:

- ``ensure_entry`` (``prepare_data``: one process per node, the one that may rebuild) checks every file's size and
  SHA-256, once per process: ~10 ms for the default corpus's 6.7 MB ``tokens.bin`` (1.3 GB/s here);
- ``check_entry`` (``setup`` on every rank, the tokenizer's readers) checks every file's size and the checksum of
  the small ones (metadata and tokenizer files, up to ``SMALL_FILE_BYTES``), so it stays at milliseconds
  however large the token file; what it finds damaged is a one-line error (it is not the one to rebuild).

Two processes building the same entry at once are safe: each builds in its own temporary folder and the first
rename wins; a damaged entry is moved aside before it is rebuilt, and put back if another process's new build
was what got moved.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from lmlab.atomic import FILESYSTEM_ERRNOS, atomic_directory, atomic_write_text
from lmlab.errors import InputError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
SMALL_FILE_BYTES = 4 * 2**20

log = logging.getLogger(__name__)

# folder -> the stat signature of its files when their checksums last matched (this process)
_verified: dict[Path, tuple] = {}


class CacheError(InputError):
    """A cache entry damaged after it was prepared: named, with the file and what is wrong."""


def cache_key(**parts) -> str:
    """A short stable hash of JSON-serialisable parts (order of keywords does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def seal(folder: Path) -> None:
    """Record the size and SHA-256 of every file in ``folder`` (an entry being built) in its manifest."""
    files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    atomic_write_text(folder / MANIFEST_FILE, json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1))


def entry_problem(folder: Path, checksum_limit: float = float("inf")) -> str | None:
    """What is wrong with the entry at ``folder`` (an existing path), or None: files missing, of another size
    than the manifest records, or (files up to ``checksum_limit`` bytes) of another SHA-256."""
    if not folder.is_dir():
        return "is not a directory"
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            return f"{MANIFEST_FILE} is of another format ({manifest.get('format')!r})"
    except FileNotFoundError:
        return f"{MANIFEST_FILE} is missing (an entry written before lmlab recorded checksums, or cut short)"
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        return f"{MANIFEST_FILE} is unreadable ({type(e).__name__}: {e})"
    try:
        for name, recorded in files.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            size = path.stat().st_size
            if size != recorded["size"]:
                how = "truncated" if size < recorded["size"] else "grown"
                return f"{name} has {size} bytes, its manifest records {recorded['size']} ({how})"
            if size <= checksum_limit and file_sha256(path) != recorded["sha256"]:
                return f"{name} has another SHA-256 than its manifest records (its content changed)"
    except (TypeError, KeyError) as e:
        return f"{MANIFEST_FILE} is unreadable ({type(e).__name__}: {e})"
    except OSError as e:
        return f"cannot be read ({e.strerror}: {e.filename})"
    return None


def _signature(folder: Path) -> tuple:
    return tuple((p.name, st.st_size, st.st_mtime_ns, st.st_ino) for p in sorted(folder.iterdir())
                 for st in [p.stat()])


def _verified_in_full(folder: Path) -> str | None:
    """entry_problem with every checksum, skipped when this process verified the same files already."""
    signature = _signature(folder) if folder.is_dir() else None
    if signature is not None and _verified.get(folder) == signature:
        return None
    problem = entry_problem(folder)
    if problem is None:
        _verified[folder] = signature
    return problem


def ensure_entry(folder: Path, build: Callable[[Path], None]) -> Path:
    """The entry at ``folder``, verified in full; ``build(tmp)`` writes its files into a temporary folder when it
    is missing, and again (after one warning naming what is wrong) when it is damaged. A cache the filesystem
    will not let us write (read-only, full, through a regular file) is a CacheError naming the path."""
    if os.path.lexists(folder):
        problem = _verified_in_full(folder)
        if problem is None:
            return folder
        log.warning("cache entry %s: %s; rebuilding it", folder, problem)
        _discard(folder)
    try:
        with atomic_directory(folder) as tmp:
            build(tmp)
            seal(tmp)
    except OSError as e:
        # ENOENT making the entry's own folders: a filesystem that refuses new folders (/proc)
        refused_folder = e.errno == errno.ENOENT and e.filename is not None and folder.is_relative_to(e.filename)
        if e.errno not in FILESYSTEM_ERRNOS and not refused_folder:
            raise
        raise CacheError(f"cache entry {folder} cannot be written ({e.filename}: {e.strerror}); the cache folder "
                         "must be writable and have room for it") from e
    return folder


def check_entry(folder: Path) -> None:
    """For readers of an entry ``ensure_entry`` prepared: every size and the small files' checksums, or a
    CacheError naming what is wrong."""
    problem = entry_problem(folder, checksum_limit=SMALL_FILE_BYTES)
    if problem is not None:
        raise CacheError(f"cache entry {folder}: {problem}; it changed after it was prepared: run the command again "
                         "to rebuild it")


def _discard(folder: Path) -> None:
    """Move a damaged entry aside and delete it; if what was moved is sound (another process rebuilt it between
    this process's check and the move), put it back."""
    aside = folder.with_name(f".{folder.name}.damaged-{os.getpid()}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        return  # another process discarded it first
    if aside.is_dir() and entry_problem(aside) is None:
        try:
            os.rename(aside, folder)
            return
        except OSError:
            pass  # a third copy is in place already
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)
