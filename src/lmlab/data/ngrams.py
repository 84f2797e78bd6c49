"""Documents as arrays of word hashes, and hashes of their word n-grams, for the whole corpus at once.

A word is what ``str.split()`` returns (a maximal run of non-whitespace characters), so n-grams are
n consecutive whitespace-separated words, as the GPT-3 / lm-evaluation-harness contamination rule and
word-shingle MinHash define them. Every word gets an id (a dict lookup per word, the only Python loop),
the id is mixed into a 64-bit hash, and an n-gram's hash mixes its words' hashes with position-dependent
odd multipliers: all vectorised over the concatenated words of every document, never across a document
boundary. 64-bit hashes make a collision between two of a corpus's ~10^7 distinct n-grams improbable
(~10^14 / 2^64 ≈ 5e-6). Everything is deterministic: no salted ``hash()``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15  # odd 64-bit constant (2^64 / golden ratio)
MASK64 = (1 << 64) - 1


def mix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: a bijection of uint64 whose every output bit depends on every input bit."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


@dataclass(frozen=True)
class Words:
    """The words of documents ``0 .. n_documents-1``, concatenated: ``hashes[starts[d]:starts[d+1]]`` are
    document ``d``'s word hashes and ``lengths`` their lengths in characters."""

    hashes: np.ndarray  # uint64 per word
    lengths: np.ndarray  # int64 characters per word
    starts: np.ndarray  # int64, n_documents + 1 offsets

    @property
    def n_documents(self) -> int:
        return len(self.starts) - 1

    @property
    def counts(self) -> np.ndarray:
        """Words per document."""
        return np.diff(self.starts)

    def document_of(self) -> np.ndarray:
        """The document index of every word."""
        return np.repeat(np.arange(self.n_documents), self.counts)


def split_words(texts: Sequence[str]) -> Words:
    """Every document's words (``str.split()``) as hashes, lengths and offsets."""
    vocabulary: dict[str, int] = {}
    next_id = itertools.count()
    split = [text.split() for text in texts]
    counts = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
    flat = list(itertools.chain.from_iterable(split))
    # setdefault with a fresh counter value: a new word keeps the value it was inserted with, so ids are unique
    ids = np.fromiter(map(vocabulary.setdefault, flat, next_id), dtype=np.uint64, count=len(flat))
    lengths = np.fromiter(map(len, flat), dtype=np.int64, count=len(flat))
    with np.errstate(over="ignore"):
        hashes = mix64(ids + np.uint64(GOLDEN))
    return Words(hashes, lengths, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))


def ngram_hashes(words: Words, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hash, first word's position in ``words``) of every n-gram that lies inside one document.

    Documents shorter than ``n`` words have none."""
    total = len(words.hashes) - n + 1
    if total <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    combined = np.zeros(total, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            combined += words.hashes[j : j + total] * np.uint64((GOLDEN * (2 * j + 1)) & MASK64)
        combined = mix64(combined + np.uint64(n))
    document = words.document_of()
    inside = document[:total] == document[n - 1 :]
    positions = np.flatnonzero(inside)
    return combined[positions], positions


def shingles(words: Words, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hash, document) of every word n-gram of every document, in document order (repeats kept): the set a
    MinHash of ``n``-word shingles summarises. A document of 1 to n-1 words is one shingle of all its words; a
    document without words has none."""
    hashes, positions = ngram_hashes(words, n)
    document = words.document_of()[positions]
    short = np.flatnonzero((words.counts > 0) & (words.counts < n))
    if len(short):
        whole = [_sequence_hash(words.hashes[words.starts[d] : words.starts[d + 1]]) for d in short]
        at = np.searchsorted(document, short)
        hashes = np.insert(hashes, at, np.array(whole, dtype=np.uint64))
        document = np.insert(document, at, short)
    return hashes, document


def _sequence_hash(word_hashes: np.ndarray) -> int:
    one = Words(word_hashes, np.zeros(len(word_hashes), np.int64), np.array([0, len(word_hashes)]))
    return int(ngram_hashes(one, len(word_hashes))[0][0])


def covered(starts: np.ndarray, n: int, size: int) -> np.ndarray:
    """A bool per word position ``0 .. size-1``: True inside any of the n-word spans beginning at ``starts``."""
    depth = np.zeros(size + 1, dtype=np.int64)
    np.add.at(depth, starts, 1)
    np.add.at(depth, starts + n, -1)
    return np.cumsum(depth[:-1]) > 0
