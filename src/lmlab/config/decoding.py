"""Schemas of the ``decoding`` group: greedy, sampling, beam search and speculative decoding."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from lmlab.config.schema import (
    Bool,
    NonNegative,
    NonNegativeInt,
    Number,
    Positive,
    PositiveInt,
    Schema,
    Str,
    ValidationInfo,
    existing_checkpoint,
    schema_of,
)
from lmlab.decoding import PROMPT_LOOKUP, beam_search, greedy, sample, speculative

# what the code passes to every strategy when it decodes (never config keys)
RUNTIME = ("model", "target", "input_ids", "max_new_tokens", "eos_token_id", "attention_mask", "pad_token_id",
           "generator")
TopP = Annotated[float, Field(strict=True, gt=0, le=1)]


@schema_of(greedy)
class GreedySchema(Schema):
    pass


@schema_of(sample)
class SampleSchema(Schema):
    temperature: NonNegative = 1.0
    top_k: NonNegativeInt = 0
    top_p: TopP = 1.0
    min_p: Annotated[float, Field(strict=True, ge=0, le=1)] = 0.0
    repetition_penalty: Positive = 1.0


@schema_of(beam_search)
class BeamSchema(Schema):
    num_beams: PositiveInt
    length_penalty: Number = 1.0
    early_stopping: Bool | Literal["never"] = False
    num_return_sequences: PositiveInt = 1

    @model_validator(mode="after")
    def returns_at_most_the_beams(self, info: ValidationInfo) -> BeamSchema:
        if self.num_return_sequences > self.num_beams:
            raise ValueError(f"{self.key(info, 'num_return_sequences')}={self.num_return_sequences}: must be at most "
                             f"{self.key(info, 'num_beams')}={self.num_beams}")
        return self


@schema_of(speculative)
class SpeculativeSchema(Schema):
    draft: Str
    num_draft_tokens: PositiveInt = 4
    temperature: NonNegative = 0.0
    top_k: NonNegativeInt = 0
    top_p: TopP = 1.0
    max_ngram_size: PositiveInt = 2

    @model_validator(mode="after")
    def draft_exists(self, info: ValidationInfo) -> SpeculativeSchema:
        if self.draft != PROMPT_LOOKUP:
            existing_checkpoint(self.draft, self.key(info, "draft"))
        return self
