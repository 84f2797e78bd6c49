"""Adapter that gives any Hugging Face causal LM the interface of lmlab's GPT.

``HFCausalLM.from_config("llama", vocab_size=..., hidden_size=...)`` builds a fresh model of a
named architecture; ``HFCausalLM.from_pretrained(path_or_name)`` loads weights (a local folder
always, the hub only when the network allows). transformers is imported when first used, so that
code paths without a Hugging Face model do not pay for its import.
"""

from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from lmlab.arguments import PositiveInt, checked, show, unknown_key
from lmlab.errors import ArgumentError
from lmlab.models.output import CausalLMOutput

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel


# Hugging Face config fields that are sizes (>= 1) and pairs that must divide
SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
         "max_position_embeddings", "n_embd", "n_layer", "n_head", "n_positions", "n_inner", "head_dim")
DIVIDES = (("hidden_size", "num_attention_heads"), ("n_embd", "n_head"), ("num_attention_heads", "num_key_value_heads"))
KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
         dict: "a mapping"}


def check_build_arguments(architecture: str | None, pretrained: str | None, parametrization: str,
                          per_architecture: dict | None = None, **overrides) -> None:
    """What ``HFCausalLM.build`` can build: a pretrained folder that holds a config (or a hub name), or a known
    architecture whose config has every overridden field (or takes it as an alias: GPT-2's ``hidden_size`` is its
    ``n_embd``), each of its default's type; in the standard parametrization (μP is lmlab's GPT's). Each entry
    of ``per_architecture`` is checked against its own architecture, used or not, so a typo never waits for the
    day that architecture is chosen."""
    from pathlib import Path

    if parametrization != "standard":
        raise ArgumentError("parametrization", parametrization, "μP is implemented for lmlab's GPT only "
                            "(model=gpt_tiny, gpt_small, llama_tiny); Hugging Face models take 'standard'")
    if pretrained:
        path = Path(pretrained).expanduser()
        if pretrained.startswith(("/", "./", "../", "~")) and not path.exists():
            raise ArgumentError("pretrained", path, "does not exist (give a folder written by save_pretrained, or a "
                                "hub name such as gpt2)")
        if path.exists() and not (path / "config.json").is_file():
            raise ArgumentError("pretrained", path, "a local folder without config.json (give a folder written by "
                                "save_pretrained, or a hub name)")
        return
    if not architecture:
        raise ArgumentError("architecture", architecture, "is needed without {pretrained}: a Hugging Face model type "
                            "(e.g. llama, gpt2)", pretrained=pretrained)
    check_architecture(architecture, "architecture")
    for name, fields in (per_architecture or {}).items():
        check_architecture(name, f"per_architecture.{name}")
        try:
            check_config_fields(name, fields or {}, divides=False)  # the sizes they divide may be set above
        except ArgumentError as e:
            raise e.within(f"per_architecture.{name}") from None
    vocab = overrides.pop("vocab_size", None)
    overrides.pop("trust_remote_code", None)
    check_config_fields(architecture, {**((per_architecture or {}).get(architecture) or {}), **overrides}, vocab=vocab)


def check_architecture(architecture: str, param: str) -> None:
    from transformers import CONFIG_MAPPING

    if architecture not in CONFIG_MAPPING:
        hint = str(unknown_key(architecture, None, CONFIG_MAPPING.keys())).split("unknown key; ", 1)[1]
        raise ArgumentError(param, architecture, f"not a Hugging Face model type; {hint}")


def config_fields(architecture: str, fields: dict) -> dict:
    """``fields`` under the names ``architecture``'s config stores them (its aliases resolved, as the config
    resolves them); a field given under two of its names is refused."""
    from transformers import CONFIG_MAPPING

    aliases = CONFIG_MAPPING[architecture].attribute_map
    named: dict = {}
    for field, value in fields.items():
        name = aliases.get(field, field)
        if name in named:
            given = next(f for f in fields if aliases.get(f, f) == name)
            raise ArgumentError(field, value, "the same field as {" + given + "} in the " + architecture + " config; "
                                "give one of them", **{given: fields[given]})
        named[name] = value
    return named


def check_config_fields(architecture: str, fields: dict, divides: bool = True, vocab: int | None = None) -> None:
    """Each of ``fields`` a field of ``architecture``'s config, of its default's kind, token ids within ``vocab``;
    with ``divides``, the sizes that must divide do (named as given)."""
    from transformers import CONFIG_MAPPING

    defaults = CONFIG_MAPPING[architecture]().to_dict()
    aliases = CONFIG_MAPPING[architecture].attribute_map
    named = config_fields(architecture, fields)
    for field, value in fields.items():
        if aliases.get(field, field) not in defaults:
            error = unknown_key(field, value, [*defaults, *aliases])
            raise ArgumentError(field, value, error.rule.replace("unknown key", f"not a field of the {architecture} "
                                                                 "config"), **error.others)
        default = defaults[aliases.get(field, field)]
        if default is not None and value is not None and not _same_kind(value, default):
            raise ArgumentError(field, value, f"must be {KINDS.get(type(default), type(default).__name__)} "
                                f"(as the config's default, {show(default)})")
        if field in SIZES and value is not None and value < 1:
            raise ArgumentError(field, value, "must be an integer >= 1")
        if field.endswith("_token_id") and isinstance(value, int) and vocab and not 0 <= value < vocab:
            raise ArgumentError(field, value, f"must be an id of the vocabulary, 0 to {vocab - 1} ({{vocab_size}})",
                                vocab_size=vocab)
    if not divides:
        return
    merged = {**defaults, **named}
    given = {aliases.get(field, field): field for field in fields}
    for big, small in DIVIDES:
        if merged.get(big) and merged.get(small) and merged[big] % merged[small]:
            small_name = given.get(small, small)
            raise ArgumentError(given.get(big, big), merged[big], "must be divisible by {" + small_name + "}",
                                **{small_name: merged[small]})


def _same_kind(value, default) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


class HFCausalLM(nn.Module):
    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.hf = model
        params = inspect.signature(model.forward).parameters
        # transformers 5.x renamed past_key_values to cache; accept both versions
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def from_config(cls, architecture: str, vocab_size: int, **overrides) -> HFCausalLM:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.for_model(architecture, vocab_size=vocab_size, **overrides)
        device = torch.get_default_device()  # meta inside `with torch.device("meta")`: shapes only
        with torch.device("meta"):  # the weights are drawn once, by init_weights (as lmlab's GPT draws them)
            model = cls(AutoModelForCausalLM.from_config(config, trust_remote_code=False))
        model.to_empty(device=device)
        model.init_weights()
        return model

    @classmethod
    def from_pretrained(cls, path: str, trust_remote_code: bool = False, **kwargs) -> HFCausalLM:
        """Weights from a folder or hub name; Python code shipped with them runs only if trusted explicitly."""
        from transformers import AutoModelForCausalLM

        return cls(AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs))

    @classmethod
    @checked(rules=check_build_arguments)
    def build(cls, architecture: str | None = None, pretrained: str | None = None, vocab_size: PositiveInt = 4096,
              trust_remote_code: bool = False, parametrization: str = "standard", per_architecture: dict | None = None,
              **overrides) -> HFCausalLM:
        """The ``model=hf`` entry point: pretrained weights if a path or name is given, else a fresh model of
        ``architecture`` whose config takes ``overrides`` (fields of that Hugging Face config) over
        ``per_architecture[architecture]`` (fields that only some architectures have, such as Llama's
        ``intermediate_size``: conf/model/hf.yaml ships a small Llama's, which GPT-2 does not take)."""
        if pretrained:
            return cls.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        fields = {**((per_architecture or {}).get(architecture) or {}), **overrides}
        return cls.from_config(architecture, vocab_size=vocab_size, **fields)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The architecture's own initialisation (also of a model built on the meta device, after ``to_empty``)."""
        self.hf.init_weights()

    @property
    def config(self):
        return self.hf.config

    @property
    def max_seq_len(self) -> int:
        c = self.hf.config
        return getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None) or 2**31

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            for module in self.hf.modules():  # learned position tables (GPT-2 style)
                if isinstance(module, nn.Embedding) and module is not self.hf.get_input_embeddings():
                    n -= module.weight.numel()
            if self.hf.get_output_embeddings() is not None and not self._tied():
                n -= self.hf.get_input_embeddings().weight.numel()
        return n

    def _tied(self) -> bool:
        out = self.hf.get_output_embeddings()
        return out is not None and out.weight is self.hf.get_input_embeddings().weight

    supports_static_cache = False  # decoding with compile=True falls back to eager for these models

    def new_cache(self, batch_size: int, max_len: int | None = None, static: bool = False) -> DynamicCache:
        if static:
            raise ValueError(f"{type(self.hf).__name__} through HFCausalLM has no static KV cache")
        from transformers import DynamicCache

        return DynamicCache(config=self.hf.config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
        output_hidden: bool = False,
    ) -> CausalLMOutput:
        out = self.hf(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=cache is not None,
            output_hidden_states=output_hidden,
            **{self._cache_arg: cache},
        )
        hidden = out.hidden_states[-1] if output_hidden else None
        return CausalLMOutput(logits=out.logits, cache=cache, hidden=hidden)

    def to_config_dict(self) -> dict:
        return self.hf.config.to_dict()


def as_causal_lm(model: nn.Module) -> nn.Module:
    """lmlab models pass through; a bare Hugging Face model is wrapped in the adapter."""
    modeling = sys.modules.get("transformers.modeling_utils")  # loaded if any HF model exists
    return HFCausalLM(model) if modeling is not None and isinstance(model, modeling.PreTrainedModel) else model

