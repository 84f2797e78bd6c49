"""The data audit: duplicates, train/validation contamination and quality of a corpus, under the exact split
lmlab trains on, and the document selection that ``dedup`` and ``decontaminate`` make from it.

It runs where the corpus is packed (:mod:`lmlab.data.packing`), on the documents and token counts being
packed, so the split it describes is the packed one by construction, and its result is stored in the
packed cache entry (``audit.json``, written atomically with the tokens): keyed by corpus, tokenizer, split
seed, validation fraction and the two switches, a second run reads it back for nothing.

- ``exact_duplicates``: groups of documents whose text is equal after Unicode NFC and collapsing every
  run of whitespace to one space (so line endings, trailing spaces and re-indented copies count as equal);
- ``near_duplicates``: clusters (connected components) of documents whose sets of 5-word shingles have
  Jaccard >= ``near_threshold``, found by MinHash + LSH and checked exactly (:mod:`lmlab.data.minhash`);
  a cluster that is only exact copies of one text is listed under ``exact_duplicates`` alone;
- ``dedup``: ``exact`` keeps the first document (corpus order) of each exact group, ``near`` the first of
  each near cluster (exact copies included), both before the split;
- the split: documents in the seeded order of :func:`~lmlab.data.packing.split_documents`, with the removed
  ones taken out of that order (so the other documents keep their side), cut at the document boundary
  nearest ``val_fraction`` of the remaining tokens;
- ``decontaminate``: validation documents sharing a 13-gram with training (:mod:`lmlab.data.contamination`)
  move to training, and so do those that then share one with a moved document, until none does;
- ``val_overlap``: validation documents of the final split sharing a 13-gram with its training documents
  (empty after ``decontaminate``), and the fraction of validation tokens inside such shared text;
- ``quality``: documents failing each Gopher rule (:mod:`lmlab.data.quality`), counted, never removed.
"""

from __future__ import annotations

import hashlib
import json
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from lmlab.data.contamination import NGRAM_WORDS, covered_token_mask, decontaminate, overlaps
from lmlab.data.minhash import components, similar_pairs
from lmlab.data.ngrams import shingles, split_words
from lmlab.data.quality import RULES, quality_failures
from lmlab.errors import ArgumentError

if TYPE_CHECKING:  # transformers is imported where a tokenizer is made (lmlab.data.tokenizer)
    from transformers import PreTrainedTokenizerFast

Dedup = Literal["none", "exact", "near"]
AUDIT_FILE = "audit.json"
VERSION = 1  # part of the packed cache key: a change of what the audit selects must re-pack
NEAR_THRESHOLD = 0.8
NUM_PERM = 128
SHINGLE_WORDS = 5


@dataclass(frozen=True)
class Selection:
    """Which documents the packed file holds, in its order (indices into the corpus order), and the token where
    validation starts."""

    order: np.ndarray
    val_start: int


def normalised(text: str) -> str:
    """The text exact duplicates are compared by: NFC, every run of whitespace one space, no leading/trailing."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def exact_duplicate_groups(texts: Sequence[str]) -> list[list[int]]:
    """Groups (of two or more, each in corpus order) of documents with the same normalised text."""
    groups: dict[bytes, list[int]] = {}
    for index, text in enumerate(texts):
        groups.setdefault(hashlib.blake2b(normalised(text).encode(), digest_size=16).digest(), []).append(index)
    return [g for g in groups.values() if len(g) > 1]


def near_duplicate_clusters(texts: Sequence[str], words, exact: list[list[int]], threshold: float
                            ) -> list[list[int]]:
    """Connected components of 'shingle Jaccard >= threshold' over all documents, exact copies included.
    Only the first of each exact group is hashed: its copies join its component."""
    copies = np.zeros(len(texts), dtype=bool)
    for group in exact:
        copies[group[1:]] = True
    hashes, document = shingles(words, SHINGLE_WORDS)
    keep = ~copies[document]
    pairs = similar_pairs(hashes[keep], document[keep], len(texts), threshold, NUM_PERM)
    return components(len(texts), pairs + [(g[0], other) for g in exact for other in g[1:]])


def select(lengths: np.ndarray, keep: np.ndarray, val_fraction: float, split_seed: int
           ) -> tuple[np.ndarray, np.ndarray, int]:
    """(training documents, validation documents, validation start in tokens) of the kept documents."""
    from lmlab.data.packing import split_documents  # here: packing imports this module


    order, val_start = split_documents(lengths, val_fraction, split_seed, keep=keep)
    if len(order) == 1:  # one document: cut inside it, on both sides
        return order, order, val_start
    n_train = int(np.searchsorted(np.cumsum(lengths[order]), val_start, side="right"))
    return order[:n_train], order[n_train:], val_start


def audit_documents(
    documents: Sequence[tuple[str, str]],
    lengths: np.ndarray,
    tokenizer: PreTrainedTokenizerFast,
    val_fraction: float,
    split_seed: int,
    dedup: Dedup,
    decontaminate_val: bool,
    near_threshold: float = NEAR_THRESHOLD,
) -> tuple[dict, Selection]:
    """The audit (a JSON-ready dict) of ``documents`` (id, text) with ``lengths`` tokens each (EOS included),
    and the documents a packed file of them holds."""
    started = time.perf_counter()
    ids = [doc_id for doc_id, _ in documents]
    texts = [text for _, text in documents]
    words = split_words(texts)
    exact = exact_duplicate_groups(texts)
    near = near_duplicate_clusters(texts, words, exact, near_threshold)
    keep = np.ones(len(texts), dtype=bool)
    for group in {"none": [], "exact": exact, "near": near}[dedup]:
        keep[group[1:]] = False
    train, val, val_start = select(lengths, keep, val_fraction, split_seed)
    one_document = keep.sum() == 1  # cut inside, on both sides: no document-level contamination to speak of
    moved: list[int] = []
    if decontaminate_val and not one_document:
        moved = decontaminate(words, train, val)
        if len(moved) == len(val):
            raise ArgumentError(
                "decontaminate", True, f"every one of the {len(val)} validation documents shares a {NGRAM_WORDS}-gram "
                "with training (directly or through another), so none would be left to validate on; use a larger "
                "{val_fraction} or decontaminate=false", val_fraction=val_fraction)
        train = np.concatenate([train, np.array(moved, dtype=np.int64)])
        val = val[~np.isin(val, moved)]
        val_start = int(lengths[train].sum())
    flagged, covered_words = ([], None) if one_document else overlaps(words, train, val)
    covered = _covered_token_count(texts, words, flagged, covered_words, tokenizer)
    distinct_near = [c for c in near if len({normalised(texts[i]) for i in c}) > 1]
    report = {
        "version": VERSION,
        "settings": {"val_fraction": val_fraction, "split_seed": split_seed, "dedup": dedup,
                     "decontaminate": decontaminate_val, "near_threshold": near_threshold, "num_perm": NUM_PERM,
                     "shingle_words": SHINGLE_WORDS, "overlap_words": NGRAM_WORDS},
        "documents": len(texts),
        "tokens": int(lengths.sum()),
        "exact_duplicates": [[ids[i] for i in g] for g in exact],
        "near_duplicates": [[ids[i] for i in c] for c in distinct_near],
        "dropped": [ids[i] for i in np.flatnonzero(~keep)],
        "split": {"train": [ids[i] for i in train], "val": [ids[i] for i in val]},
        "split_tokens": {"train": lengths[train].tolist(), "val": lengths[val].tolist()},
        "decontaminated": [ids[i] for i in moved],
        "val_overlap": [ids[i] for i in flagged],
        "val_overlap_token_fraction": covered / max(int(lengths[val].sum()), 1),
        "val_too_short_to_overlap": int((words.counts[val] < NGRAM_WORDS).sum()),
        "quality": {rule: int(fails.sum()) for rule, fails in quality_failures(texts, words).items()},
        "quality_rules": RULES,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return report, Selection(train if one_document else np.concatenate([train, val]), val_start)


def _covered_token_count(texts, words, flagged, covered_words, tokenizer) -> int:
    if not flagged:
        return 0
    encodings = tokenizer.backend_tokenizer.encode_batch([texts[d] for d in flagged], add_special_tokens=False)
    return sum(int(covered_token_mask(texts[d], covered_words[words.starts[d] : words.starts[d + 1]], e.offsets).sum())
               for d, e in zip(flagged, encodings, strict=True))


def save_audit(report: dict, folder: Path) -> None:
    (folder / AUDIT_FILE).write_text(json.dumps(report, indent=1))


def load_audit(folder: Path) -> dict:
    return json.loads((folder / AUDIT_FILE).read_text())


def _removable(groups: list[list]) -> int:
    return sum(len(g) - 1 for g in groups)


def summary_line(report: dict) -> str:
    """The audit in one console line."""
    split, quality = report["split"], report["quality"]
    failing = ", ".join(f"{rule} {count}" for rule, count in quality.items() if count) or "none"
    return (f"data audit: {report['documents']} documents; exact duplicates {len(report['exact_duplicates'])} groups "
            f"({_removable(report['exact_duplicates'])} copies), near duplicates {len(report['near_duplicates'])} "
            f"clusters ({_removable(report['near_duplicates'])} copies); dedup={report['settings']['dedup']} dropped "
            f"{len(report['dropped'])}; split {len(split['train'])} train / {len(split['val'])} val documents, "
            f"{len(report['decontaminated'])} moved to train; {len(report['val_overlap'])} val documents share a "
            f"{NGRAM_WORDS}-gram with train ({report['val_overlap_token_fraction']:.1%} of val tokens); "
            f"Gopher rules failed: {failing}")


def audit_metrics(report: dict) -> dict[str, float]:
    """The audit's counts as flat ``data/...`` numbers (a W&B run's summary, a report's columns)."""
    split = report["split"]
    return {"data/documents": report["documents"], "data/tokens": report["tokens"],
            "data/exact_duplicate_groups": len(report["exact_duplicates"]),
            "data/near_duplicate_clusters": len(report["near_duplicates"]), "data/dropped": len(report["dropped"]),
            "data/train_documents": len(split["train"]), "data/val_documents": len(split["val"]),
            "data/decontaminated": len(report["decontaminated"]), "data/val_overlap": len(report["val_overlap"]),
            "data/val_overlap_token_fraction": report["val_overlap_token_fraction"],
            **{f"data/gopher_{rule}": count for rule, count in report["quality"].items()}}


def summary_table(report: dict):
    """The audit as a ``rich`` table: one row per finding, with its count and what it means."""
    from rich.table import Table

    settings, split, tokens = report["settings"], report["split"], report["split_tokens"]
    table = Table(title=f"data audit: {report['documents']} documents, {report['tokens']:,} tokens")
    for column, justify in (("finding", "left"), ("count", "right"), ("rule", "left")):
        table.add_column(column, justify=justify)
    rows = [
        ("exact duplicate groups", len(report["exact_duplicates"]),
         f"same text after NFC and whitespace collapsing ({_removable(report['exact_duplicates'])} copies)"),
        ("near duplicate clusters", len(report["near_duplicates"]),
         f"Jaccard >= {settings['near_threshold']} over {settings['shingle_words']}-word shingles "
         f"({_removable(report['near_duplicates'])} copies)"),
        ("dropped before the split", len(report["dropped"]), f"dedup={settings['dedup']}"),
        ("train documents", len(split["train"]), f"{sum(tokens['train']):,} tokens"),
        ("val documents", len(split["val"]), f"{sum(tokens['val']):,} tokens (val_fraction="
                                              f"{settings['val_fraction']}, split_seed={settings['split_seed']})"),
        ("moved from val to train", len(report["decontaminated"]),
         f"decontaminate={str(settings['decontaminate']).lower()}"),
        ("val documents overlapping train", len(report["val_overlap"]),
         f"share a {settings['overlap_words']}-gram of words: "
         f"{report['val_overlap_token_fraction']:.2%} of val tokens"),
    ]
    rows += [(f"Gopher: {rule}", count, report["quality_rules"][rule]) for rule, count in report["quality"].items()]
    for finding, count, rule in rows:
        table.add_row(finding, str(count), rule)
    return table
