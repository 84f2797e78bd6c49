"""A byte-level BPE tokenizer trained on the corpus, wrapped as a ``transformers`` tokenizer and cached.

Byte-level means every string round-trips exactly (``decode(encode(x)) == x``) with no unknown token,
which matters for code. The cache entry is keyed by the corpus fingerprint, the vocabulary size and
the training settings below, is saved with ``save_pretrained`` so ``AutoTokenizer`` reloads it, and is
verified against its manifest when read (:mod:`lmlab.data.cache`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import annotated_types as at
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmlab.arguments import checked
from lmlab.data.cache import cache_key, check_entry, ensure_entry
from lmlab.data.corpus import Corpus

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)
SETTINGS = dict(model="byte-level-bpe", special_tokens=SPECIAL_TOKENS, add_prefix_space=False, version=1)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


# a byte-level BPE needs its 256 byte tokens and the special tokens
VocabSize = Annotated[int, at.Ge(MIN_VOCAB_SIZE)]


@checked
def train_tokenizer(texts: Iterable[str], vocab_size: VocabSize) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``; EOS doubles as BOS (GPT-2's convention), pad is its own token."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def tokenizer_cache_dir(corpus: Corpus, vocab_size: int, cache_dir: Path) -> Path:
    key = cache_key(corpus=corpus.fingerprint(), vocab_size=vocab_size, settings=SETTINGS)
    return cache_dir / "tokenizers" / key


def cached_tokenizer(corpus: Corpus, vocab_size: int, cache_dir: Path) -> PreTrainedTokenizerFast:
    """The tokenizer for this corpus and vocabulary size: loaded from the cache, or trained and cached."""

    def build(folder: Path) -> None:
        log.info("training a byte-level BPE tokenizer (vocab %d) on %r", vocab_size, corpus)
        train_tokenizer((text for _, text in corpus), vocab_size).save_pretrained(folder)

    return load_tokenizer(ensure_entry(tokenizer_cache_dir(corpus, vocab_size, cache_dir), build))


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """A cached tokenizer (checked against its manifest: a damaged file is a one-line CacheError)."""
    from transformers import PreTrainedTokenizerFast

    check_entry(Path(folder))
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """Hash of the whole tokenizer definition (vocabulary, merges, pre-tokenizer): it fixes the ids."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]
