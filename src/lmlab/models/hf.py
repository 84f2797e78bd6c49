"""Adapter that gives any Hugging Face causal LM the interface of lmlab's GPT.

``HFCausalLM.from_config("llama", vocab_size=..., hidden_size=...)`` builds a fresh model of a
named architecture; ``HFCausalLM.from_pretrained(path_or_name)`` loads weights (a local folder
always, the hub only when the network allows). transformers is imported when first used, so that
code paths without a Hugging Face model do not pay for its import.
"""

from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn as nn

from lmlab.models.output import CausalLMOutput

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel


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

        try:
            config = AutoConfig.for_model(architecture, vocab_size=vocab_size, **overrides)
        except ValueError as e:
            raise ValueError(f"model.architecture={architecture!r} is not a Hugging Face model type: {e}") from e
        return cls(AutoModelForCausalLM.from_config(config, trust_remote_code=False))

    @classmethod
    def from_pretrained(cls, path: str, trust_remote_code: bool = False, **kwargs) -> HFCausalLM:
        """Weights from a folder or hub name; Python code shipped with them runs only if trusted explicitly."""
        from transformers import AutoModelForCausalLM

        return cls(AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs))

    @classmethod
    def build(cls, architecture: str | None, pretrained: str | None, vocab_size: int,
              trust_remote_code: bool = False, parametrization: Literal["standard"] = "standard",
              **overrides) -> HFCausalLM:
        """The ``model=hf`` entry point: pretrained weights if a path or name is given, else a fresh model."""
        if parametrization != "standard":
            from lmlab.arguments import ArgumentError

            raise ArgumentError("parametrization", parametrization, "μP is implemented for lmlab's GPT only "
                                "(model=gpt_tiny, gpt_small, llama_tiny); Hugging Face models take 'standard'")
        if pretrained:
            return cls.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        if not architecture:
            raise ValueError("model=hf needs model.architecture (e.g. llama, gpt2) or model.pretrained")
        return cls.from_config(architecture, vocab_size=vocab_size, **overrides)

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
