"""Causal language models with one interface: lmlab's own GPT and any Hugging Face causal LM."""

from lmlab.models.cache import KVCache
from lmlab.models.gpt import GPT, GPTConfig
from lmlab.models.output import CausalLMOutput

__all__ = ["GPT", "GPTConfig", "KVCache", "CausalLMOutput"]
