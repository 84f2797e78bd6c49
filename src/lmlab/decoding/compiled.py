"""Decoding from a static KV cache with a compiled step (gpt-fast style): :class:`StaticDecoder`.

A static cache is read whole under a mask and written through an index, and the step takes its positions as
tensors, so nothing in the step's graph depends on how far the generation has got: a one-token step compiles
once per (batch size, chunk length) and is then reused for every token. On CUDA it runs with
``mode="reduce-overhead"``, which replays the step as a CUDA graph: one launch per token instead of one per
kernel. A CUDA graph replays only with the buffer addresses it recorded, so the decoder keeps the caches it
made and hands the same buffers to the next generation of the same shape.
"""

from __future__ import annotations

import torch

from lmlab.models.cache import KVCache

RECOMPILE_LIMIT = 64  # graphs per step: target and draft, several batch sizes and chunk lengths
FREE_SHAPES = 4  # cache shapes a decoder keeps for reuse
LIMIT_SETTING = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"  # <2.6


class StaticDecoder:
    """A model's compiled decode step and the static caches it writes into. Get it with :meth:`of`."""

    def __init__(self, model: torch.nn.Module, backend: str = "inductor"):
        self.model = model
        device = next(model.parameters()).device
        mode = "reduce-overhead" if device.type == "cuda" and backend == "inductor" else None
        # whole-graph (a graph break is an error) and static shapes
        self._step = torch.compile(self._forward, backend=backend, mode=mode, fullgraph=True, dynamic=False)
        self._free: dict[tuple, KVCache] = {}  # shape -> a cache no generation holds, most recent last

    @staticmethod
    def of(model: torch.nn.Module, backend: str = "inductor") -> StaticDecoder:
        """``model``'s decoder for ``backend``, made on first use and kept with the model (its compiled graphs
        and cache buffers live as long as the model; copies and pickles of the model start without them)."""
        decoders = model.__dict__.get("_static_decoders")
        if decoders is None:
            decoders = model.__dict__["_static_decoders"] = _NotCopied()
        if backend not in decoders:
            decoders[backend] = StaticDecoder(model, backend)
        return decoders[backend]

    def lease(self, batch_size: int, max_len: int) -> KVCache:
        """A static cache of this shape, empty: the one the last generation of this shape returned, if any."""
        p = self.model.norm_f.weight  # the dtype and device of lmlab GPT's caches (see GPT.new_cache)
        cache = self._free.pop((batch_size, max_len, p.dtype, p.device), None)
        if cache is None:
            return self.model.new_cache(batch_size, max_len, static=True)
        cache.length = 0
        return cache

    def release(self, cache: KVCache) -> None:
        """Take a cache back once its generation is over (two live generations never share one)."""
        self._free[(cache.batch_size, cache.max_len, cache.keys[0].dtype, cache.keys[0].device)] = cache
        while len(self._free) > FREE_SHAPES:
            self._free.pop(next(iter(self._free)))

    def step(self, input_ids, attention_mask, position_ids, cache_position, cache: KVCache) -> torch.Tensor:
        """Logits [B, T, V] of one compiled step; the caller advances the cache."""
        if input_ids.is_cuda:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs have been consumed
        with torch._dynamo.config.patch(**{LIMIT_SETTING: RECOMPILE_LIMIT}):
            return self._step(input_ids, attention_mask, position_ids, cache_position, cache)

    def _forward(self, input_ids, attention_mask, position_ids, cache_position, cache):
        return self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                          cache_position=cache_position).logits


def supports_static_cache(model) -> bool:
    return bool(getattr(model, "supports_static_cache", False))


class _NotCopied(dict):
    """Decoders held by a model: compiled graphs and buffers belong to that model object, so a copy or a
    pickle of it (quantizing a copy, ddp_spawn) gets none."""

    def __deepcopy__(self, memo) -> _NotCopied:
        return _NotCopied()

    def __reduce__(self):
        return _NotCopied, ()
