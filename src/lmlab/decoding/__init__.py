"""Decoding strategies for any lmlab causal LM (own GPT or a Hugging Face model), all with a KV cache:
greedy, sampling, beam search and speculative decoding, plus output quality metrics."""

from lmlab.decoding.beam import beam_search
from lmlab.decoding.metrics import decode_metrics, distinct_n, output_perplexity, repetition_rate
from lmlab.decoding.sampling import greedy, sample
from lmlab.decoding.speculative import PROMPT_LOOKUP, prompt_lookup, speculative, speculative_accept

__all__ = [
    "greedy",
    "sample",
    "beam_search",
    "speculative",
    "speculative_accept",
    "prompt_lookup",
    "PROMPT_LOOKUP",
    "decode_metrics",
    "distinct_n",
    "repetition_rate",
    "output_perplexity",
]
