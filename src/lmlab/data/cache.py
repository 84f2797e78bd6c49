"""Cache keys: each cache entry (tokenizer, packed tokens, pairs) is a directory named by a hash of everything
that determines its content, written whole by :func:`lmlab.atomic.atomic_directory`."""

from __future__ import annotations

import hashlib
import json


def cache_key(**parts) -> str:
    """A short stable hash of JSON-serialisable parts (order of keywords does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
