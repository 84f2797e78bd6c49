"""Query/document pairs for contrastive embedding training: a code-search task mined from real code.

Every documented function in the corpus gives one pair: the query is the first paragraph of its docstring
(the summary line(s), as in CodeSearchNet), the document is the function's source without the docstring.
Pairs whose query or document text occurred before are dropped, so no two pairs share an answer.
The split is by source file (no file on both sides), seeded, with about ``val_fraction`` of the pairs
held out. ``pairs="simcse"`` trains instead on each training text paired with itself (SimCSE: the two
views differ only by dropout, so the model needs dropout); validation is the code-search task in both.

Tokens come from the same cached tokenizer an LM run on this corpus and vocabulary uses, and the encoded
pairs are cached under a key of corpus, tokenizer and extraction settings, like the packed LM tokens (and verified
against their manifest like them: :mod:`lmlab.data.cache`).
"""

from __future__ import annotations

import ast
import io
import json
import logging
import textwrap
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lmlab.arguments import PositiveInt, checked
from lmlab.data.cache import cache_key, check_entry, ensure_entry
from lmlab.data.corpus import Corpus
from lmlab.data.datamodule import CorpusDataModule
from lmlab.data.packing import split_documents, token_dtype
from lmlab.data.tokenizer import tokenizer_fingerprint
from lmlab.errors import ArgumentError

if TYPE_CHECKING:  # transformers is imported where a tokenizer is made (lmlab.data.tokenizer)
    from transformers import PreTrainedTokenizerFast

PAIRS_FILE = "pairs.npz"
META_FILE = "meta.json"
FORMAT_VERSION = 2

log = logging.getLogger(__name__)


class CodePair(NamedTuple):
    query: str  # the docstring's first paragraph
    document: str  # the function's source (decorators and docstring left out), dedented


def extract_pairs(source: str, min_docstring_chars: int = 16) -> list[CodePair]:
    """(docstring, code) pairs of every function and method in ``source``, in source order.

    Skipped: functions without a docstring, with a summary shorter than ``min_docstring_chars``, whose
    body is only the docstring, or whose docstring shares a line with other code (it cannot be cut out
    by lines). Raises ``SyntaxError``/``ValueError`` when ``source`` is not Python.
    """
    with warnings.catch_warnings():  # invalid escapes in old code are the corpus's business, not ours
        warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
        tree = ast.parse(source)
    lines = io.StringIO(source, newline="").readlines()  # ast's lines: str.splitlines also cuts at \f etc.
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    pairs = []
    for node in sorted(functions, key=lambda n: (n.lineno, n.col_offset)):
        docstring = ast.get_docstring(node, clean=True)
        if docstring is None or len(node.body) < 2:
            continue
        query = docstring.split("\n\n", 1)[0].strip()
        expr = node.body[0]
        starts_own_line = not lines[expr.lineno - 1].encode()[: expr.col_offset].strip()
        if len(query) < min_docstring_chars or not starts_own_line or node.body[1].lineno <= expr.end_lineno:
            continue
        header = lines[node.lineno - 1 : expr.lineno - 1]
        body = lines[expr.end_lineno : node.end_lineno]
        pairs.append(CodePair(query, textwrap.dedent("".join(header + body)).rstrip() + "\n"))
    return pairs


def corpus_pairs(
    corpus: Iterable[tuple[str, str]], min_docstring_chars: int
) -> tuple[dict[str, list[CodePair]], int]:
    """Pairs by document id for the documents that have any (corpus order), without repeated queries or
    documents, and the number of documents that are not Python."""
    by_document, seen_queries, seen_documents, not_python = {}, set(), set(), 0
    for doc_id, text in corpus:
        try:
            pairs = extract_pairs(text, min_docstring_chars)
        except (SyntaxError, ValueError):
            not_python += 1
            continue
        unique = []
        for pair in pairs:
            if pair.query not in seen_queries and pair.document not in seen_documents:
                seen_queries.add(pair.query)
                seen_documents.add(pair.document)
                unique.append(pair)
        if unique:
            by_document[doc_id] = unique
    return by_document, not_python


class EncodedPairs(NamedTuple):
    """Token ids of every pair, training pairs first: pairs ``[val_start, n)`` are the validation split,
    extracted from ``val_documents`` (document ids, e.g. file paths)."""

    queries: list[np.ndarray]
    documents: list[np.ndarray]
    val_start: int
    val_documents: list[str]
    n_documents: int
    n_not_python: int

    def save(self, folder: Path) -> None:
        arrays = {}
        for side, texts in (("query", self.queries), ("document", self.documents)):
            arrays[f"{side}_tokens"] = np.concatenate([np.zeros(0, token_dtype(0)), *texts])
            arrays[f"{side}_offsets"] = np.cumsum([0] + [len(t) for t in texts])
        np.savez(folder / PAIRS_FILE, **arrays)
        meta = {k: v for k, v in self._asdict().items() if k not in ("queries", "documents")}
        (folder / META_FILE).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: Path) -> EncodedPairs:
        """The pairs of a prepared cache entry (checked against its manifest)."""
        check_entry(folder)
        with np.load(folder / PAIRS_FILE) as arrays:
            sides = [np.split(arrays[f"{side}_tokens"], arrays[f"{side}_offsets"][1:-1])
                     for side in ("query", "document")]
        return cls(*sides, **json.loads((folder / META_FILE).read_text()))


def encode_pairs(
    corpus: Corpus, tokenizer: PreTrainedTokenizerFast, min_docstring_chars: int, val_fraction: float,
    split_seed: int,
) -> EncodedPairs:
    """Extract, split by document (seeded, about ``val_fraction`` of the pairs held out) and encode."""
    by_document, not_python = corpus_pairs(corpus, min_docstring_chars)
    doc_ids = list(by_document)
    n_pairs = np.array([len(pairs) for pairs in by_document.values()], dtype=np.int64)
    if len(doc_ids) < 2:  # one document would have to sit on both sides of the split
        order, val_start = np.arange(len(doc_ids)), int(n_pairs.sum())
    else:
        order, val_start = split_documents(n_pairs, val_fraction, split_seed)
    ends = np.cumsum(n_pairs[order])
    val_documents = [doc_ids[i] for i, end in zip(order, ends, strict=True) if end > val_start]
    pairs = [pair for i in order for pair in by_document[doc_ids[i]]]
    dtype = token_dtype(len(tokenizer))
    encode = tokenizer.backend_tokenizer.encode_batch_fast
    queries, documents = (
        [np.array(e.ids, dtype=dtype) for e in encode(texts, add_special_tokens=False)]
        for texts in ([p.query for p in pairs], [p.document for p in pairs])
    )
    return EncodedPairs(queries, documents, int(val_start), val_documents, len(doc_ids), not_python)


class TextPairs(Dataset):
    """Pair ``i`` as ``(i, first[i], second[i])``, each side cut to its first ``max_tokens`` ids."""

    def __init__(self, first: list[np.ndarray], second: list[np.ndarray], max_tokens: int):
        if len(first) != len(second):
            raise ValueError(f"TextPairs needs sides of one length, got {len(first)} and {len(second)}")
        self.first, self.second, self.max_tokens = first, second, max_tokens

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray, np.ndarray]:
        return index, self.first[index][: self.max_tokens], self.second[index][: self.max_tokens]


class PadPairs:
    """Collate ``TextPairs`` items into right-padded LongTensors with 0/1 masks (1 = real token).

    ``index`` (each pair's position in its dataset) lets validation drop the repeats that a distributed
    sampler pads the last batches with.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[int, np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
        index, queries, documents = zip(*items, strict=True)
        query_ids, query_mask = self.pad(queries)
        doc_ids, doc_mask = self.pad(documents)
        return dict(query_ids=query_ids, query_mask=query_mask, doc_ids=doc_ids, doc_mask=doc_mask,
                    index=torch.tensor(index))

    def pad(self, sequences: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(sequences), max(len(s) for s in sequences)), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, s in enumerate(sequences):
            ids[row, : len(s)] = torch.from_numpy(s.astype(np.int64))
            mask[row, : len(s)] = 1
        return ids, mask


class CodePairsDataModule(CorpusDataModule):
    """Docstring/code pairs from a corpus: batches ``{query_ids, query_mask, doc_ids, doc_mask, index}``.

    ``block_size`` is the most tokens per side (longer texts are cut), so it must fit the model's context.
    ``pairs``: ``code_search`` trains on (docstring, code) pairs; ``simcse`` on every training docstring
    and function each paired with itself. ``seed`` orders training batches, ``split_seed`` picks the
    held-out files. The tokenizer is the corpus's cached one, so an LM run and a pairs run share tokens.
    """

    batches = "pairs"  # what a batch is (lmlab.tasks)

    @checked
    def __init__(self, corpus: Corpus, min_docstring_chars: PositiveInt = 16,
                 pairs: Literal["code_search", "simcse"] = "code_search", **kwargs):
        """``kwargs``: :class:`CorpusDataModule`'s (vocab_size, block_size, batch_size, ...)."""
        super().__init__(corpus, **kwargs)
        self.min_docstring_chars = min_docstring_chars
        self.pairs = pairs
        self.train_pairs: TextPairs | None = None
        self.val_pairs: TextPairs | None = None

    def _pairs_folder(self) -> Path:
        key = cache_key(
            corpus=self.corpus.fingerprint(),
            tokenizer=tokenizer_fingerprint(self.tokenizer),
            min_docstring_chars=self.min_docstring_chars,
            val_fraction=self.val_fraction,
            split_seed=self.split_seed,
            version=FORMAT_VERSION,
        )
        return self.cache_dir / "pairs" / key

    def prepare_data(self) -> None:
        """Train (or load) the corpus tokenizer, then extract and encode the pairs unless cached."""
        self._tokenizer = self.prepare_tokenizer()
        folder = self._pairs_folder()

        def build(tmp: Path) -> None:
            log.info("extracting docstring/code pairs from %r into %s", self.corpus, folder)
            encode_pairs(self.corpus, self.tokenizer, self.min_docstring_chars, self.val_fraction,
                         self.split_seed).save(tmp)

        ensure_entry(folder, build)

    def setup(self, stage: str | None = None) -> None:
        if self.val_pairs is not None:
            return
        folder = self._pairs_folder()
        if not folder.is_dir():
            raise RuntimeError(f"no encoded pairs cached at {folder}; call prepare_data() first")
        encoded = EncodedPairs.load(folder)
        split = encoded.val_start
        queries, documents = encoded.queries, encoded.documents
        self._check_split_size("training", split, encoded)
        self._check_split_size("validation", len(queries) - split, encoded)
        if self.pairs == "simcse":
            texts = queries[:split] + documents[:split]
            self.train_pairs = TextPairs(texts, texts, self.block_size)
        else:
            self.train_pairs = TextPairs(queries[:split], documents[:split], self.block_size)
        self.val_pairs = TextPairs(queries[split:], documents[split:], self.block_size)

    def _check_split_size(self, split: str, n_pairs: int, encoded: EncodedPairs) -> None:
        if n_pairs >= self.batch_size:
            return
        found = (f"found {len(encoded.queries)} docstring/code pairs in {encoded.n_documents} documents "
                 f"({encoded.n_not_python} not Python)")
        raise ArgumentError(
            "", None, f"the {split} split has {n_pairs} pairs, fewer than one batch of {{batch_size}}; "
            f"{{corpus}}: {found} with {{min_docstring_chars}}. Use a larger corpus of Python code or a smaller "
            "batch_size" + (", or a larger val_fraction" if split == "validation" else "")
            + (" (the split is by file: at least two files with documented functions)" if encoded.n_documents < 2
               else ""),
            batch_size=self.batch_size, corpus=self.corpus, min_docstring_chars=self.min_docstring_chars)

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self.train_pairs, collate_fn=PadPairs(self.tokenizer.pad_token_id))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_pairs, shuffle=False, collate_fn=PadPairs(self.tokenizer.pad_token_id))
