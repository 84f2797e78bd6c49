"""Data pipeline: document corpora, a cached byte-level BPE tokenizer, packed token blocks, a DataModule."""

from lmlab.data.blocks import TokenBlocks
from lmlab.data.corpus import Corpus, HFDataset, StdlibCode, TextFiles
from lmlab.data.datamodule import LMDataModule
from lmlab.data.packing import PackedCorpus, pack_corpus
from lmlab.data.pairs import CodePairsDataModule
from lmlab.data.sampler import ResumableShuffleSampler
from lmlab.data.tokenizer import EOS_TOKEN, PAD_TOKEN, cached_tokenizer, load_tokenizer, train_tokenizer

__all__ = [
    "Corpus",
    "StdlibCode",
    "TextFiles",
    "HFDataset",
    "train_tokenizer",
    "cached_tokenizer",
    "load_tokenizer",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "pack_corpus",
    "PackedCorpus",
    "TokenBlocks",
    "ResumableShuffleSampler",
    "LMDataModule",
    "CodePairsDataModule",
]
