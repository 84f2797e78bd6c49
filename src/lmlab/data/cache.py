"""Keyed, atomically written cache entries, so an interrupted prepare never leaves a half-written cache.

Each entry is a directory named by a hash of everything that determines its content. It is built in a
temporary sibling directory and renamed into place only when complete; a directory rename is atomic,
so readers see either nothing or the whole entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def cache_key(**parts) -> str:
    """A short stable hash of JSON-serialisable parts (order of keywords does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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
