"""What makes text files unusable as a corpus, found before a tokenizer is trained on them.

- binary files (a NUL byte) and files that are not UTF-8: refused, every such file named (the first
  few and a count), so one run shows them all;
- a "word" the BPE pre-tokenizer cannot split (a run of letters, digits or punctuation longer than
  ``MAX_WORD_BYTES``, e.g. a 50 MB line of one character): refused, because BPE training takes time
  quadratic in a word's length;
- empty files are skipped (they hold no document); long lines of ordinary text are fine;
- what is not a regular file (a dangling symlink, a FIFO that would block the read forever, a socket, a
  device) and a file the OS will not let us read: refused, named like the others.

The scan reads each file once and finds the longest word with numpy: the byte-level pre-tokenizer cuts
text into runs of letters, of digits, of punctuation and of whitespace (GPT-2's pattern), so a word is a
run of bytes of one class (bytes of non-ASCII characters counted as letters).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from lmlab.errors import ArgumentError

MAX_WORD_BYTES = 10_000
FILES_NAMED = 5


def _byte_classes() -> np.ndarray:
    """Class of each byte value: 0 punctuation, 1 letter (or part of a non-ASCII character), 2 digit, 3 space."""
    classes = np.zeros(256, dtype=np.uint8)
    classes[[*range(ord("a"), ord("z") + 1), *range(ord("A"), ord("Z") + 1), *range(0x80, 0x100)]] = 1
    classes[ord("0"):ord("9") + 1] = 2
    classes[list(b" \t\n\r\x0b\x0c")] = 3
    return classes


BYTE_CLASSES = _byte_classes()


def not_a_file(path: Path) -> str | None:
    """Why ``path``, found in a corpus folder or by a glob, is not a regular file (without reading it), or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{path} is a dangling symlink (to {os.readlink(path)})" if path.is_symlink() else f"{path} is gone"
    except OSError as e:
        return f"{path} cannot be read ({e.strerror})"
    if stat.S_ISREG(mode):
        return None
    kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket"
            if stat.S_ISSOCK(mode) else "a device")
    return f"{path} is {kind}, not a file"


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a document of a text corpus, or None."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"{path} cannot be read ({e.strerror})"
    if b"\0" in data:
        return f"{path} is binary (it contains NUL bytes)"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"{path} is not UTF-8 text ({e.reason} at byte {e.start})"
    longest = longest_word(data)
    if longest > MAX_WORD_BYTES:
        return (f"{path} has a {longest}-byte word (a run of letters, digits, punctuation or spaces), longer than "
                f"the {MAX_WORD_BYTES} bytes a BPE tokenizer trains on in reasonable time")
    return None


def longest_word(data: bytes) -> int:
    """Length in bytes of the longest run of bytes of one class (letters, digits, punctuation, whitespace)."""
    if not data:
        return 0
    classes = BYTE_CLASSES[np.frombuffer(data, dtype=np.uint8)]
    bounds = np.concatenate([[0], np.flatnonzero(classes[1:] != classes[:-1]) + 1, [len(classes)]])
    return int(np.diff(bounds).max())


def check_text_files(files: list[Path]) -> None:
    """One ArgumentError naming every unusable file (the first few, then a count), before any work."""
    problems = [p for p in map(file_problem, files) if p]
    if problems:
        raise ArgumentError("", None, problems_named(problems, len(files), "files"))


def problems_named(problems: list[str], total: int, what: str) -> str:
    """``n of total <what> cannot be used: the first few problems; and k more (how to leave them out)``."""
    more = f"; and {len(problems) - FILES_NAMED} more" if len(problems) > FILES_NAMED else ""
    return (f"{len(problems)} of {total} {what} cannot be used: " + "; ".join(problems[:FILES_NAMED]) + more
            + " (remove them, or pick text files with a glob such as paths='src/**/*.py')")
