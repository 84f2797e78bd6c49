"""Schemas of the ``model`` group: lmlab's GPT and any Hugging Face causal LM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from lmlab.config.messages import show, unknown_key_hint
from lmlab.config.schema import Bool, PositiveInt, Schema, Str, ValidationInfo, schema_of
from lmlab.models import GPT
from lmlab.models.activations import ACTIVATIONS
from lmlab.models.hf import HFCausalLM

Dropout = Annotated[float, Field(strict=True, ge=0, lt=1)]


@schema_of(GPT)
class GPTSchema(Schema):
    vocab_size: PositiveInt = 4096
    block_size: PositiveInt = 256
    n_layer: PositiveInt = 4
    n_head: PositiveInt = 4
    n_kv_head: PositiveInt | None = None
    n_embd: PositiveInt = 128
    mlp_ratio: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)] = 4.0
    dropout: Dropout = 0.0
    bias: Bool = True
    position: Literal["learned", "rope"] = "learned"
    rope_theta: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)] = 10000.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["standard", "swiglu"] = "standard"
    activation: Literal[tuple(ACTIVATIONS)] = "gelu"
    tie_embeddings: Bool = True

    @model_validator(mode="after")
    def heads_divide(self, info: ValidationInfo) -> GPTSchema:
        key = lambda field: self.key(info, field)
        if self.n_embd % self.n_head:
            raise ValueError(f"{key('n_embd')}={self.n_embd}: must be divisible by {key('n_head')}={self.n_head}")
        kv = self.n_kv_head or self.n_head
        if self.n_head % kv:
            raise ValueError(f"{key('n_head')}={self.n_head}: must be divisible by {key('n_kv_head')}={kv}")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"{key('position')}=rope: needs an even head dimension: {key('n_embd')}={self.n_embd} / "
                             f"{key('n_head')}={self.n_head} = {self.n_embd // self.n_head}")
        return self

    @property
    def context(self) -> int:
        return self.block_size


# Hugging Face config fields that are sizes (>= 1) and pairs that must divide
HF_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "max_position_embeddings", "n_embd", "n_layer", "n_head", "n_positions", "n_inner", "head_dim")
HF_DIVIDES = (("hidden_size", "num_attention_heads"), ("n_embd", "n_head"),
              ("num_attention_heads", "num_key_value_heads"))


@schema_of(HFCausalLM.build)
class HFModelSchema(Schema):
    """``model=hf``: every other key is a field of the architecture's Hugging Face config, checked against it."""

    model_config = Schema.model_config | {"extra": "allow"}

    architecture: Str | None = None
    pretrained: Str | None = None
    trust_remote_code: Bool = False
    vocab_size: PositiveInt

    @model_validator(mode="after")
    def architecture_fields(self, info: ValidationInfo) -> HFModelSchema:
        from transformers import CONFIG_MAPPING

        key = lambda field: self.key(info, field)
        if self.pretrained:
            path = Path(self.pretrained).expanduser()
            if path.exists() and not (path / "config.json").is_file():
                raise ValueError(f"{key('pretrained')}={self.pretrained}: a local folder without config.json "
                                 "(give a folder written by save_pretrained, or a hub name)")
            return self
        if not self.architecture:
            raise ValueError(f"{key('architecture')}=null: model=hf needs model.architecture (e.g. llama, gpt2) "
                             "or model.pretrained")
        if self.architecture not in CONFIG_MAPPING:
            raise ValueError(f"{key('architecture')}={self.architecture!r}: not a Hugging Face model type; "
                             f"{unknown_key_hint(self.architecture, sorted(CONFIG_MAPPING.keys()), '')}"
                             .replace("unknown key; ", ""))
        defaults = CONFIG_MAPPING[self.architecture]().to_dict()
        extra = self.model_extra or {}
        for field, value in extra.items():
            if field not in defaults:
                raise ValueError(f"{key(field)}={show(value)}: not a field of the {self.architecture} config; "
                                 + unknown_key_hint(field, sorted(defaults), key("")).removeprefix("unknown key; "))
            default = defaults[field]
            expected = int if isinstance(default, int) and not isinstance(default, bool) else type(default)
            number = expected in (int, float)
            wrong_type = isinstance(value, bool) != isinstance(default, bool) or (
                number and not isinstance(value, int | float)) or (expected is int and isinstance(value, float))
            if default is not None and value is not None and (wrong_type or (not number and not isinstance(
                    value, expected))):
                raise ValueError(f"{key(field)}={show(value)}: must be {_kind(default)} (as the config's default, "
                                 f"{show(default)})")
            if field in HF_SIZES and value is not None and value < 1:
                raise ValueError(f"{key(field)}={show(value)}: must be an integer >= 1")
        merged = {**defaults, **extra}
        for big, small in HF_DIVIDES:
            if merged.get(big) and merged.get(small) and merged[big] % merged[small]:
                raise ValueError(f"{key(big)}={merged[big]}: must be divisible by {key(small)}={merged[small]}")
        return self

    @property
    def context(self) -> int | None:
        extra = self.model_extra or {}
        return extra.get("max_position_embeddings") or extra.get("n_positions")


def _kind(value) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)
