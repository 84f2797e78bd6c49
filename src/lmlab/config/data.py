"""Schemas of the ``data`` group: the DataModules and their corpora."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from lmlab.config.schema import Int, NonNegativeInt, PositiveInt, Schema, Str, schema_of
from lmlab.data import CodePairsDataModule, HFDataset, LMDataModule, StdlibCode, TextFiles
from lmlab.data.pairs import PAIR_KINDS
from lmlab.data.tokenizer import MIN_VOCAB_SIZE

Fraction = Annotated[float, Field(strict=True, gt=0, lt=1)]


@schema_of(LMDataModule)
class LMDataSchema(Schema):
    corpus: dict
    vocab_size: Annotated[int, Field(strict=True, ge=MIN_VOCAB_SIZE)] = 4096
    block_size: PositiveInt = 128
    batch_size: PositiveInt = 32
    global_batch_size: PositiveInt | None = None
    val_fraction: Fraction = 0.05
    num_workers: NonNegativeInt = 0
    cache_dir: Str = "~/.cache/lmlab"
    seed: Int = 1234
    split_seed: Int = 0


@schema_of(CodePairsDataModule)
class CodePairsSchema(LMDataSchema):
    min_docstring_chars: PositiveInt = 16
    pairs: Literal[PAIR_KINDS] = "code_search"


@schema_of(StdlibCode)
class StdlibCodeSchema(Schema):
    pass


@schema_of(TextFiles)
class TextFilesSchema(Schema):
    paths: Str | Annotated[list[Str], Field(min_length=1)]


@schema_of(HFDataset)
class HFDatasetSchema(Schema):
    path: Str
    name: Str | None = None
    split: Str = "train"
    text_field: Str = "text"
    data_files: Str | list[Str] | dict[str, Str | list[Str]] | None = None
