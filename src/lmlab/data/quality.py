"""Gopher's document-quality heuristics (Rae et al. 2021, "Scaling Language Models", appendix A.1.1 and
table A1), each counted as the documents that would fail it. lmlab reports them; it filters nothing.

The thresholds are the paper's, set for English web prose. Where a rule's text leaves a choice, or code
differs from prose, lmlab decides as follows (the reference implementation, datatrove's Gopher filters,
makes the same choices unless noted):
- a word is what ``str.split()`` returns (whitespace-separated), as in the paper; code "words" such as
  ``self.assertEqual(a,`` are long, so code fails ``mean_word_length`` more than prose does;
- ``symbol_to_word``: ``#`` and ``...``/``…`` counted anywhere in the text, per word; in Python ``#`` starts
  a comment, so well-commented code fails it: read the count as "comment-heavy", not "low quality";
- ``duplicate_lines``: blank lines are not lines (datatrove splits on runs of newlines), and lines are
  compared with surrounding whitespace stripped (lmlab's choice for code: the same statement at another
  indentation is the same line repeated);
- ``top_ngram`` and ``duplicate_ngram`` count characters of words (not the spaces between them); a word
  inside several repeated n-grams counts once.
The prose-only rules (stop words, alphabetic words, bullet and ellipsis lines) are left out: they say nothing
about code, lmlab's default corpus.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lmlab.data.ngrams import Words, covered, mix64, ngram_hashes

MIN_WORDS, MAX_WORDS = 50, 100_000
MEAN_WORD_LENGTH = (3, 10)
MAX_SYMBOL_TO_WORD = 0.1
MAX_DUPLICATE_LINES = 0.3
TOP_NGRAM = {2: 0.20, 3: 0.18, 4: 0.16}
DUPLICATE_NGRAM = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}

RULES = {
    "too_short": f"fewer than {MIN_WORDS} words",
    "too_long": f"more than {MAX_WORDS:,} words",
    "mean_word_length": f"mean word length outside [{MEAN_WORD_LENGTH[0]}, {MEAN_WORD_LENGTH[1]}] characters",
    "symbol_to_word": f"more than {MAX_SYMBOL_TO_WORD} '#' or '...' per word",
    "duplicate_lines": f"more than {MAX_DUPLICATE_LINES:.0%} of non-blank lines repeat an earlier line",
    "top_ngram": "the most frequent n-gram holds more than "
                 + ", ".join(f"{v:.0%} (n={n})" for n, v in TOP_NGRAM.items()) + " of the characters",
    "duplicate_ngram": "repeated n-grams hold more than "
                       + ", ".join(f"{v:.0%} (n={n})" for n, v in DUPLICATE_NGRAM.items()) + " of the characters",
}


def quality_failures(texts: Sequence[str], words: Words) -> dict[str, np.ndarray]:
    """For each rule of :data:`RULES`, a bool per document: True when the document fails it."""
    counts = words.counts
    characters = np.bincount(words.document_of(), weights=words.lengths, minlength=words.n_documents)
    mean_length = characters / np.maximum(counts, 1)
    symbols = np.array([max(t.count("#"), t.count("...") + t.count("\u2026")) for t in texts], dtype=np.float64)
    failures = {
        "too_short": counts < MIN_WORDS,
        "too_long": counts > MAX_WORDS,
        "mean_word_length": (mean_length < MEAN_WORD_LENGTH[0]) | (mean_length > MEAN_WORD_LENGTH[1]),
        "symbol_to_word": symbols / np.maximum(counts, 1) > MAX_SYMBOL_TO_WORD,
        "duplicate_lines": np.array([duplicate_line_fraction(t) > MAX_DUPLICATE_LINES for t in texts], dtype=bool),
        "top_ngram": np.zeros(words.n_documents, dtype=bool),
        "duplicate_ngram": np.zeros(words.n_documents, dtype=bool),
    }
    safe_characters = np.maximum(characters, 1)
    for n, limit in TOP_NGRAM.items():
        failures["top_ngram"] |= top_ngram_characters(words, n) / safe_characters > limit
    repeated = None  # an n-gram can repeat only where its first 5 words do: longer n look there alone
    for n, limit in DUPLICATE_NGRAM.items():
        characters_inside, repeated = duplicate_ngram_characters(words, n, repeated)
        failures["duplicate_ngram"] |= characters_inside / safe_characters > limit
    return failures


def duplicate_line_fraction(text: str) -> float:
    """Of the non-blank lines (stripped), the fraction that repeat an earlier one."""
    lines = [stripped for line in text.split("\n") if (stripped := line.strip())]
    return 1 - len(set(lines)) / len(lines) if lines else 0.0


def _ngram_occurrences(words: Words, n: int, only: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """(position, document, occurrences of the n-gram starting there within its document) of every n-gram, or of
    those starting at the positions where ``only`` (a bool per word) is True."""
    hashes, positions = ngram_hashes(words, n)
    if only is not None:
        hashes, positions = hashes[only[positions]], positions[only[positions]]
    document = words.document_of()[positions]
    with np.errstate(over="ignore"):
        keys = hashes ^ mix64(document.astype(np.uint64) + np.uint64(1))
    order = np.argsort(keys)
    sorted_keys = keys[order]
    run_starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
    run_lengths = np.diff(np.append(run_starts, len(keys)))
    occurrences = np.empty(len(keys), dtype=np.int64)
    occurrences[order] = np.repeat(run_lengths, run_lengths)
    return positions, document, occurrences


def _ngram_characters(words: Words, positions: np.ndarray, n: int) -> np.ndarray:
    cumulative = np.concatenate([[0], np.cumsum(words.lengths)])
    return cumulative[positions + n] - cumulative[positions]


def top_ngram_characters(words: Words, n: int) -> np.ndarray:
    """Per document: characters of its most frequent n-gram times its occurrences (0 without a repeat)."""
    positions, document, occurrences = _ngram_occurrences(words, n)
    total = _ngram_characters(words, positions, n) * occurrences * (occurrences > 1)
    # each document's most frequent n-gram, the longest among equally frequent ones
    most = np.zeros(words.n_documents, dtype=np.int64)
    np.maximum.at(most, document, occurrences)
    result = np.zeros(words.n_documents, dtype=np.int64)
    np.maximum.at(result, document, np.where(occurrences == most[document], total, 0))
    return result


def duplicate_ngram_characters(words: Words, n: int, only: np.ndarray | None = None
                               ) -> tuple[np.ndarray, np.ndarray]:
    """(per document: characters of the words inside an n-gram occurring more than once in it; a bool per word:
    True where such an n-gram starts). ``only``: the positions where one may start (None: all)."""
    positions, _, occurrences = _ngram_occurrences(words, n, only)
    starts = np.zeros(len(words.hashes), dtype=bool)
    starts[positions[occurrences > 1]] = True
    inside = covered(np.flatnonzero(starts), n, len(words.hashes))
    characters = np.bincount(words.document_of()[inside], weights=words.lengths[inside],
                             minlength=words.n_documents)
    return characters, starts
