"""Train/validation contamination: validation documents that share an n-gram of words with training.

The rule is GPT-3's and lm-evaluation-harness's (Brown et al. 2020, appendix C): a validation document is
contaminated when any 13 consecutive whitespace-separated words of it also occur, consecutively, in a
training document. A document of fewer than 13 words has no 13-gram and cannot be flagged.

How much of validation that affects is counted in the model's own tokens, since those are what the
validation loss averages over: a token counts when any of its characters lies inside the text of a
shared 13-gram (from its first word's first character to its last word's last character), i.e. the
model predicts it inside a passage it may have seen in training. The EOS that ends each document is a
validation token too and never counts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from lmlab.data.ngrams import Words, covered, ngram_hashes

NGRAM_WORDS = 13
WORD = re.compile(r"\S+")  # the words str.split() returns (both use Python's notion of whitespace)


def _ngrams_of(words: Words, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hashes, positions = ngram_hashes(words, n)
    return hashes, positions, words.document_of()[positions]


def _members(words: Words, documents: Sequence[int]) -> np.ndarray:
    """A bool per document of ``words``: True for ``documents``."""
    mask = np.zeros(words.n_documents, dtype=bool)
    mask[list(documents)] = True
    return mask


def _shared(hashes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Which of ``hashes`` are in the sorted array ``reference`` (repeats allowed)."""
    if not len(reference):
        return np.zeros(len(hashes), dtype=bool)
    at = np.minimum(np.searchsorted(reference, hashes), len(reference) - 1)
    return reference[at] == hashes


def overlaps(words: Words, train: Sequence[int], val: Sequence[int], n: int = NGRAM_WORDS
             ) -> tuple[list[int], np.ndarray]:
    """(validation documents sharing an n-gram with a training document, in ``val``'s order; a bool per word of
    ``words``: True for validation words inside a shared n-gram)."""
    hashes, positions, document = _ngrams_of(words, n)
    reference = np.sort(hashes[_members(words, train)[document]])
    in_val = _members(words, val)[document]
    hit = _shared(hashes[in_val], reference)
    flagged = set(document[in_val][hit].tolist())
    return [d for d in val if d in flagged], covered(positions[in_val][hit], n, len(words.hashes))


def decontaminate(words: Words, train: Sequence[int], val: Sequence[int], n: int = NGRAM_WORDS) -> list[int]:
    """The validation documents to move to training so that no remaining one shares an n-gram with training:
    the overlapping ones, then those that overlap the moved ones, until none does (in ``val``'s order)."""
    hashes, _, document = _ngrams_of(words, n)
    remaining = _members(words, val)
    reference = np.sort(hashes[_members(words, train)[document]])
    moved = np.zeros(words.n_documents, dtype=bool)
    while True:
        candidates = remaining[document]
        hit = _shared(hashes[candidates], reference)
        newly = np.unique(document[candidates][hit])
        if not len(newly):
            return [d for d in val if moved[d]]
        moved[newly] = True
        remaining[newly] = False
        reference = np.sort(np.concatenate([reference, hashes[np.isin(document, newly)]]))


def covered_token_mask(text: str, covered_words: np.ndarray, token_offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Which of ``text``'s tokens (their character ``token_offsets``) have a character inside a run of covered
    words (``covered_words``: a bool per word of ``text.split()``)."""
    tokens = np.asarray(token_offsets, dtype=np.int64).reshape(-1, 2)
    if not covered_words.any() or not len(tokens):
        return np.zeros(len(tokens), dtype=bool)
    spans = np.array([m.span() for m in WORD.finditer(text)], dtype=np.int64)
    if len(spans) != len(covered_words):
        raise AssertionError(f"{len(spans)} regex words against {len(covered_words)} from str.split()")
    flags = np.concatenate([[False], covered_words, [False]])
    first = np.flatnonzero(flags[1:-1] & ~flags[:-2])
    last = np.flatnonzero(flags[1:-1] & ~flags[2:])
    range_starts, range_ends = spans[first, 0], spans[last, 1]
    # the last covered range starting before a token's end covers the token when it ends after the token's start
    candidate = np.searchsorted(range_starts, tokens[:, 1], side="left") - 1
    return (candidate >= 0) & (range_ends[np.maximum(candidate, 0)] > tokens[:, 0])
