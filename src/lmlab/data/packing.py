"""Encode a corpus once into a memory-mapped token file with a deterministic train/validation split.

Every document is encoded and followed by EOS. Documents are then written in a seeded shuffled order;
the training split is the front of the file and the validation split the back, so no document is on
both sides (except when the corpus is a single document, which is cut at the target fraction). The
split point is the document boundary nearest to the requested ``val_fraction`` of tokens.

Before the split, the documents are audited (:mod:`lmlab.data.audit`): ``dedup`` takes duplicates out
and ``decontaminate`` moves validation documents that share a 13-gram with training to training. The
audit, with every document's id and token count in file order, is stored beside the tokens.

The result is cached under a key of corpus fingerprint, tokenizer fingerprint, split seed, validation
fraction and the two switches, written atomically with a manifest of its files' sizes and checksums, so a
second run only reads two JSON files after verifying the entry (:mod:`lmlab.data.cache`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lmlab.data.audit import VERSION as AUDIT_VERSION
from lmlab.data.audit import Dedup, audit_documents, save_audit
from lmlab.data.cache import cache_key, check_entry, ensure_entry
from lmlab.data.corpus import Corpus
from lmlab.data.tokenizer import tokenizer_fingerprint
from lmlab.errors import ArgumentError

if TYPE_CHECKING:  # transformers is imported where a tokenizer is made (lmlab.data.tokenizer)
    from transformers import PreTrainedTokenizerFast

TOKENS_FILE = "tokens.bin"
META_FILE = "meta.json"
ENCODE_BATCH_CHARS = 8_000_000
FORMAT_VERSION = 2  # 2: documents audited, deduplicated and decontaminated before packing (audit.json)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackedCorpus:
    """Description of one packed token file: train tokens are ``[0, val_start)``, validation the rest."""

    folder: str
    dtype: str
    n_tokens: int
    val_start: int
    eos_id: int
    n_documents: int
    n_val_documents: int

    @property
    def tokens_path(self) -> Path:
        return Path(self.folder) / TOKENS_FILE

    @property
    def n_train_tokens(self) -> int:
        return self.val_start

    @property
    def n_val_tokens(self) -> int:
        return self.n_tokens - self.val_start

    def tokens(self) -> np.memmap:
        return np.memmap(self.tokens_path, dtype=self.dtype, mode="r", shape=(self.n_tokens,))

    @classmethod
    def load(cls, folder: Path) -> PackedCorpus:
        """The packed corpus of a prepared cache entry (checked against its manifest)."""
        check_entry(folder)
        meta = json.loads((folder / META_FILE).read_text())
        return cls(folder=str(folder), **meta)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def packed_cache_dir(
    corpus: Corpus, tokenizer: PreTrainedTokenizerFast, cache_dir: Path, val_fraction: float, split_seed: int,
    dedup: Dedup = "none", decontaminate: bool = False,
) -> Path:
    key = cache_key(
        corpus=corpus.fingerprint(),
        tokenizer=tokenizer_fingerprint(tokenizer),
        val_fraction=val_fraction,
        split_seed=split_seed,
        dedup=dedup,
        decontaminate=decontaminate,
        version=FORMAT_VERSION,
        audit=AUDIT_VERSION,
    )
    return cache_dir / "tokens" / key


def pack_corpus(
    corpus: Corpus, tokenizer: PreTrainedTokenizerFast, cache_dir: Path, val_fraction: float, split_seed: int,
    dedup: Dedup = "none", decontaminate: bool = False,
) -> PackedCorpus:
    """The packed token file for this corpus, tokenizer and split: from the cache, or encoded and cached."""
    folder = packed_cache_dir(corpus, tokenizer, cache_dir, val_fraction, split_seed, dedup, decontaminate)

    def build(tmp: Path) -> None:
        log.info("encoding %r into %s", corpus, folder)
        _write_packed(corpus, tokenizer, tmp, val_fraction, split_seed, dedup, decontaminate)

    return PackedCorpus.load(ensure_entry(folder, build))


def _write_packed(
    corpus: Corpus, tokenizer: PreTrainedTokenizerFast, folder: Path, val_fraction: float, split_seed: int,
    dedup: Dedup, decontaminate: bool,
) -> None:
    dtype = token_dtype(len(tokenizer))
    eos_id = tokenizer.eos_token_id
    documents = list(corpus)
    if not documents:
        raise ArgumentError("corpus", corpus, "has no non-empty documents")
    in_corpus_order = folder / "corpus_order.bin"
    lengths = _encode_to_file([text for _, text in documents], tokenizer, dtype, eos_id, in_corpus_order)
    audit, selection = audit_documents(documents, lengths, tokenizer, val_fraction, split_seed, dedup, decontaminate)
    order, val_start = selection.order, selection.val_start
    _write_in_order(in_corpus_order, lengths, order, dtype, folder / TOKENS_FILE)
    in_corpus_order.unlink()
    save_audit(audit, folder)
    ends = np.cumsum(lengths[order])
    meta = PackedCorpus(
        folder=str(folder),
        dtype=dtype.name,
        n_tokens=int(ends[-1]),
        val_start=int(val_start),
        eos_id=int(eos_id),
        n_documents=len(order),
        n_val_documents=int(np.sum(ends > val_start)),
    )
    fields = {k: v for k, v in asdict(meta).items() if k != "folder"}
    (folder / META_FILE).write_text(json.dumps(fields, indent=1))


def _documents_in_batches(texts: list[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= ENCODE_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _encode_to_file(
    texts: list[str], tokenizer: PreTrainedTokenizerFast, dtype: np.dtype, eos_id: int, path: Path
) -> np.ndarray:
    """Write every document's ids followed by EOS, in corpus order; return each document's length."""
    backend = tokenizer.backend_tokenizer
    lengths = []
    with open(path, "wb") as out:
        for batch in _documents_in_batches(texts):
            for encoding in backend.encode_batch_fast(batch, add_special_tokens=False):
                ids = np.empty(len(encoding.ids) + 1, dtype=dtype)
                ids[:-1] = encoding.ids
                ids[-1] = eos_id
                out.write(ids.tobytes())
                lengths.append(len(ids))
    return np.array(lengths, dtype=np.int64)


def split_documents(
    lengths: np.ndarray, val_fraction: float, seed: int, keep: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """Seeded document order and the token offset where validation starts (the nearest document boundary).

    ``keep`` (a bool per document) takes documents out of the order, the others keeping their places in it, so
    removing a few documents moves only the boundary: the rest stay on their side."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    if keep is not None:
        order = order[keep[order]]
    ends = np.cumsum(lengths[order])
    target = ends[-1] * (1.0 - val_fraction)
    boundaries = ends[:-1]
    if len(boundaries) == 0:
        return order, int(np.clip(round(target), 1, ends[-1] - 1))
    return order, int(boundaries[np.abs(boundaries - target).argmin()])


def _write_in_order(
    source: Path, lengths: np.ndarray, order: np.ndarray, dtype: np.dtype, target: Path
) -> None:
    tokens = np.memmap(source, dtype=dtype, mode="r")
    starts = np.cumsum(lengths) - lengths
    with open(target, "wb") as out:
        for doc in order:
            out.write(tokens[starts[doc] : starts[doc] + lengths[doc]].tobytes())
    del tokens
