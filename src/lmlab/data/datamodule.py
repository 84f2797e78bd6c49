"""The LightningDataModule: corpus -> cached tokenizer -> cached packed tokens -> block DataLoaders.

``prepare_data`` (one process per node) trains/encodes into the cache; ``setup`` (every rank, also in
``ddp_spawn`` children) only reads the cache. Everything held is picklable: memory maps open lazily.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from lmlab.arguments import Fraction, NonNegativeInt, PositiveInt, checked
from lmlab.atomic import unwritable
from lmlab.data.audit import Dedup, load_audit
from lmlab.data.blocks import TokenBlocks
from lmlab.data.corpus import Corpus
from lmlab.data.packing import PackedCorpus, pack_corpus, packed_cache_dir
from lmlab.data.sampler import ResumableShuffleSampler
from lmlab.data.tokenizer import MIN_VOCAB_SIZE, VocabSize, cached_tokenizer, load_tokenizer, tokenizer_cache_dir
from lmlab.errors import ArgumentError

if TYPE_CHECKING:  # transformers is imported where a tokenizer is made (lmlab.data.tokenizer)
    from transformers import PreTrainedTokenizerFast

DEFAULT_CACHE_DIR = "~/.cache/lmlab"


class CorpusDataModule(L.LightningDataModule):
    """What lmlab's DataModules share: a corpus, its cached tokenizer, batch settings checked before any
    work, and a training order that resumes mid-epoch. ``seed`` fixes the order of training batches;
    ``split_seed`` fixes which documents are held out, and is separate so runs with different seeds are
    compared on the same validation documents. ``tokenizer_from``: a Hugging Face folder (a pretrained model's,
    as ``model.init_from``) whose tokenizer encodes the corpus instead of a BPE trained on it; ``vocab_size``
    is then not used (the tokenizer fixes the ids)."""

    @checked
    def __init__(
        self,
        corpus: Corpus,
        vocab_size: VocabSize = 4096,
        block_size: PositiveInt = 128,
        batch_size: PositiveInt = 32,
        val_fraction: Fraction = 0.05,
        num_workers: NonNegativeInt = 0,
        cache_dir: str = DEFAULT_CACHE_DIR,
        seed: int = 1234,
        split_seed: int = 0,
        global_batch_size: PositiveInt | None = None,
        tokenizer_from: str | None = None,
    ):
        super().__init__()
        self.corpus = corpus
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.batch_size = batch_size
        # sequences per optimizer step over all ranks; the train CLI sets the trainer's accumulation from it
        self.global_batch_size = global_batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.cache_dir = Path(os.path.expanduser(cache_dir))
        self.seed = seed
        self.split_seed = split_seed
        self.tokenizer_from = tokenizer_from
        self._tokenizer: PreTrainedTokenizerFast | None = None

    def check_inputs(self) -> None:
        """What can be refused before any preparation (cheap: file sizes, one read of each file): unusable
        files, a vocabulary larger than the corpus can give, a corpus too small for one batch. Files were
        checked already when their tokenizer is cached (its key covers every file's size and time)."""
        if self.tokenizer_from is not None:
            self._pretrained_tokenizer()  # a folder without a usable tokenizer fails here, before any work
            self.corpus.check()
            return
        size = self.corpus.size()
        if size is not None:
            n_bytes, n_documents = size
            # every BPE merge joins two tokens of the corpus into one: at most one new token per byte
            if self.vocab_size > MIN_VOCAB_SIZE + n_bytes:
                raise ArgumentError(
                    "vocab_size", self.vocab_size, "more than this corpus can give; a byte-level BPE learns at most "
                    f"one token per byte of text, so {n_bytes} bytes allow at most {MIN_VOCAB_SIZE} + {n_bytes} = "
                    f"{MIN_VOCAB_SIZE + n_bytes}")
            self._check_size_estimate(n_bytes, n_documents)
        if not tokenizer_cache_dir(self.corpus, self.vocab_size, self.cache_dir).is_dir():
            self._check_cache_writable()
            try:
                self.corpus.check()
            except ArgumentError as e:
                raise e.within("corpus") from None

    def _check_cache_writable(self) -> None:
        """Before a tokenizer is trained into it (a cache that holds every entry may be read-only)."""
        if (error := unwritable(self.cache_dir, folder=True)) is not None:
            raise ArgumentError("cache_dir", str(self.cache_dir), f"cannot be written ({error.filename}: "
                                f"{error.strerror}); choose a writable folder (or set LMLAB_CACHE)")

    def _check_size_estimate(self, n_bytes: int, n_documents: int) -> None:
        """Subclasses refuse a corpus whose size in bytes already shows it too small (exact check after encoding)."""

    def prepare_tokenizer(self) -> PreTrainedTokenizerFast:
        """The tokenizer of ``tokenizer_from``, or the corpus's BPE (trained and cached unless cached already)."""
        if self.tokenizer_from is not None:
            return self._pretrained_tokenizer()
        return cached_tokenizer(self.corpus, self.vocab_size, self.cache_dir)

    def _pretrained_tokenizer(self) -> PreTrainedTokenizerFast:
        from lmlab.models.pretrained import read_tokenizer

        tokenizer = read_tokenizer(self.tokenizer_from)
        if tokenizer is None or tokenizer.eos_token_id is None:
            what = "no tokenizer files" if tokenizer is None else "a tokenizer without an EOS token"
            raise ArgumentError("tokenizer_from", self.tokenizer_from,
                                f"has {what}; documents are packed with EOS between them")
        return tokenizer

    def load_tokenizer(self) -> PreTrainedTokenizerFast:
        """The cached tokenizer (or ``tokenizer_from``'s); works in any process once ``prepare_data`` has run on
        this node."""
        if self.tokenizer_from is not None:
            return self._pretrained_tokenizer()
        folder = tokenizer_cache_dir(self.corpus, self.vocab_size, self.cache_dir)
        if not folder.is_dir():
            raise RuntimeError(f"no tokenizer cached at {folder}; call prepare_data() first")
        return load_tokenizer(folder)

    @property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        if self._tokenizer is None:
            self._tokenizer = self.load_tokenizer()
        return self._tokenizer

    def save_tokenizer(self, folder: str | Path) -> None:
        """Write tokenizer.json + tokenizer_config.json, which ``AutoTokenizer.from_pretrained`` reloads."""
        self.tokenizer.save_pretrained(str(folder))

    def _train_loader(self, dataset, **kwargs) -> DataLoader:
        resume_epoch, resume_batches = self._resume_position()
        sampler = ResumableShuffleSampler(
            dataset, self.seed, resume_epoch, resume_samples=resume_batches * self.batch_size
        )
        return self._loader(dataset, sampler=sampler, drop_last=True, **kwargs)

    def _loader(self, dataset, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def _resume_position(self) -> tuple[int, int]:
        """(epoch, batches trained in it) while Lightning resumes a fit from a checkpoint, else (0, 0).

        Lightning restores its loop progress before it asks for the training DataLoader.
        """
        trainer = self.trainer
        if trainer is None or not trainer.fit_loop.restarting:
            return 0, 0
        return (
            trainer.fit_loop.epoch_progress.current.processed,
            trainer.fit_loop.epoch_loop.batch_progress.current.processed,
        )


class LMDataModule(CorpusDataModule):
    """Language-model data: blocks of ``block_size + 1`` tokens from a corpus, split by document.

    Batches are LongTensors ``x`` of shape ``[batch_size, block_size + 1]``: inputs ``x[:, :-1]``, targets
    ``x[:, 1:]``. ``kwargs``: :class:`CorpusDataModule`'s.

    ``dedup`` (before the split): ``near`` keeps one document of each cluster of near duplicates (Jaccard >= 0.8
    over 5-word shingles, exact copies included), ``exact`` one of each group of equal normalised texts, ``none``
    every document. ``decontaminate=true`` moves validation documents that share a 13-gram of words with
    training to training (off by default: on code, shared licence headers flag half of the stdlib's validation
    files and can flag all of a small corpus's; the audit reports the overlap every run). What both did, and the
    rest of the data audit, is :meth:`audit` (:mod:`lmlab.data.audit`).
    """

    batches = "blocks"  # what a batch is (lmlab.tasks)

    # set by setup()
    packed: PackedCorpus | None = None
    train_blocks: TokenBlocks | None = None
    val_blocks: TokenBlocks | None = None

    @checked
    def __init__(self, corpus: Corpus, dedup: Dedup = "near", decontaminate: bool = False, **kwargs):
        super().__init__(corpus, **kwargs)
        self.dedup = dedup
        self.decontaminate = decontaminate

    def _packed_folder(self) -> Path:
        return packed_cache_dir(self.corpus, self.tokenizer, self.cache_dir, self.val_fraction, self.split_seed,
                                self.dedup, self.decontaminate)

    def prepare_data(self) -> None:
        """Train the tokenizer and encode the corpus, unless both are cached already."""
        self._tokenizer = self.prepare_tokenizer()
        pack_corpus(self.corpus, self._tokenizer, self.cache_dir, self.val_fraction, self.split_seed, self.dedup,
                    self.decontaminate)

    def audit(self) -> dict:
        """The data audit of this corpus and split (duplicates, contamination, quality; :mod:`lmlab.data.audit`),
        stored with the packed tokens: prepares them when they are not cached yet."""
        self.prepare_data()
        return load_audit(self._packed_folder())

    def setup(self, stage: str | None = None) -> None:
        if self.packed is not None:
            return
        folder = self._packed_folder()
        if not folder.is_dir():
            raise RuntimeError(f"no packed tokens cached at {folder}; call prepare_data() first")
        packed = PackedCorpus.load(folder)
        self._check_split_size("training", packed.n_train_tokens)
        self._check_split_size("validation", packed.n_val_tokens)
        path = str(packed.tokens_path)
        self.train_blocks = TokenBlocks(path, packed.dtype, 0, packed.val_start, self.block_size)
        self.val_blocks = TokenBlocks(path, packed.dtype, packed.val_start, packed.n_tokens, self.block_size)
        self.packed = packed

    def _check_size_estimate(self, n_bytes: int, n_documents: int) -> None:
        """A byte-level token holds at least one byte, and each document adds one EOS: at most bytes + documents
        tokens, which must hold one batch of blocks for training and one for validation."""
        needed = 2 * (self.batch_size * self.block_size + 1)
        if n_bytes + n_documents < needed:
            raise ArgumentError(
                "", None, f"the corpus has {n_bytes} bytes in {n_documents} non-empty files, so at most "
                f"{n_bytes + n_documents} tokens, fewer than one batch for training and one for validation need "
                f"(2 x ({{batch_size}} x {{block_size}} + 1) = {needed}); use a larger corpus or a smaller batch_size "
                "or block_size", batch_size=self.batch_size, block_size=self.block_size)

    def _check_split_size(self, split: str, n_tokens: int) -> None:
        needed = self.batch_size * self.block_size + 1
        if n_tokens < needed:
            raise ArgumentError(
                "", None, f"the {split} split has {n_tokens} tokens, fewer than one batch of {{batch_size}} x "
                f"{{block_size}} + 1 = {needed}; use a larger corpus or a smaller batch_size or block_size"
                + (", or a larger {val_fraction}" if split == "validation" else ""),
                batch_size=self.batch_size, block_size=self.block_size, val_fraction=self.val_fraction)

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self.train_blocks)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_blocks, shuffle=False)

    def val_prompts(self, n: int, n_tokens: int) -> list[list[int]]:
        """The first ``n_tokens`` ids of ``n`` validation blocks spread evenly over the split (fixed).

        Returns fewer than ``n`` prompts when the validation split has fewer blocks.
        """
        if not 1 <= n_tokens <= self.block_size:
            raise ArgumentError("n_tokens", n_tokens, f"must lie in [1, the data's block_size={self.block_size}]")
        self.setup()
        n = min(n, len(self.val_blocks))
        picks = np.linspace(0, len(self.val_blocks) - 1, n).round().astype(int)
        return [self.val_blocks[int(i)][:n_tokens].tolist() for i in picks]
