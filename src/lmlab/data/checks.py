"""What makes text files unusable as a corpus, found before a tokenizer is trained on them.

- binary files (a NUL byte) and files that are not UTF-8: refused, every such file named (the first
  few and a count), so one run shows them all;
- a "word" the BPE pre-tokenizer cannot split (a run of letters, digits or punctuation longer than
  ``MAX_WORD_BYTES``, e.g. a 50 MB line of one character): refused, because BPE training takes time
  quadratic in a word's length (a 100 kB word takes ~15 s, 2 MB does not finish);
- empty files are skipped (they hold no document); long lines of ordinary text are fine.

The scan reads each file once; runs without whitespace are found with numpy, and only runs longer than
the limit go through the tokenizer's own pre-tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import pre_tokenizers

from lmlab.errors import InputError

MAX_WORD_BYTES = 10_000
FILES_NAMED = 5
WHITESPACE = np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8)


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a document of a text corpus, or None."""
    data = path.read_bytes()
    if b"\0" in data:
        return f"{path} is binary (it contains NUL bytes)"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"{path} is not UTF-8 text ({e.reason} at byte {e.start})"
    longest = longest_word(data)
    if longest > MAX_WORD_BYTES:
        return (f"{path} has a {longest}-byte word (letters, digits or punctuation without a break), longer than "
                f"the {MAX_WORD_BYTES} bytes a BPE tokenizer trains on in reasonable time")
    return None


def longest_word(data: bytes) -> int:
    """Length in bytes of the longest pre-token of ``data``, exact wherever it exceeds MAX_WORD_BYTES."""
    text = np.frombuffer(data, dtype=np.uint8)
    breaks = np.flatnonzero(np.isin(text, WHITESPACE))
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(text)]])
    long_runs = np.flatnonzero(ends - starts > MAX_WORD_BYTES)
    split = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str
    longest = 0
    for i in long_runs:
        run = data[starts[i]:ends[i]].decode("utf-8")
        longest = max(longest, max(len(piece) for piece, _ in split(run)))
    return longest


def check_text_files(files: list[Path], key: str = "data.corpus") -> None:
    """One InputError naming every unusable file (the first few, then a count), before any work."""
    problems = [p for p in map(file_problem, files) if p]
    if not problems:
        return
    more = f"; and {len(problems) - FILES_NAMED} more" if len(problems) > FILES_NAMED else ""
    raise InputError(f"{key}: {len(problems)} of {len(files)} files cannot be used: " + "; ".join(
        problems[:FILES_NAMED]) + more + " (remove them, or pick text files with a glob such as "
        "data.corpus.paths='src/**/*.py')")
