"""The compiled decode step: every forward after the prefill, under ``torch.compile``.

The step runs a static-cache model (the cache read whole under a mask, written through an index),
and takes its positions as tensors, so nothing in its graph depends on how far the generation has
got: a one-token step compiles once per (model, batch size, chunk length) and is then reused for
every token. On CUDA it runs with ``mode="reduce-overhead"``, which replays the step as a CUDA
graph: one launch per token instead of one per kernel.

A CUDA graph replays only with the buffer addresses it recorded, so static caches are leased from
a small pool per model: each generation of the same shape writes into the same buffers.
"""

from __future__ import annotations

import functools
import weakref

import torch

RECOMPILE_LIMIT = 64  # graphs per compiled function: target and draft, several batch sizes and chunk lengths
_FREE_SHAPES_PER_MODEL = 4

_pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {shape: [free caches]}


def supports_static_cache(model) -> bool:
    return bool(getattr(model, "supports_static_cache", False))


def lease_static_cache(model, batch_size: int, max_len: int):
    """A static cache of this shape for ``model``: a free one from its pool (reset), else a new one.
    Hand it back with :func:`release_static_cache` once the generation is over."""
    p = next(model.parameters())
    key = (batch_size, max_len, p.dtype, p.device)
    free = _pools.setdefault(model, {}).get(key)
    if free:
        cache = free.pop()
        cache.length = 0
        return cache
    return model.new_cache(batch_size, max_len, static=True)


def release_static_cache(model, cache) -> None:
    pool = _pools.setdefault(model, {})
    key = (cache.batch_size, cache.max_len, cache.keys[0].dtype, cache.keys[0].device)
    pool[key] = [cache]  # one free cache per shape is all a sequential decode loop needs
    pool[key] = pool.pop(key)  # most recently used last
    while len(pool) > _FREE_SHAPES_PER_MODEL:
        pool.pop(next(iter(pool)))


def _step(model, input_ids, attention_mask, position_ids, cache_position, cache):
    return model(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                 cache_position=cache_position).logits


@functools.cache
def compiled_step(device_type: str, backend: str = "inductor"):
    """``_step`` under torch.compile: whole-graph (a graph break would be an error), static shapes."""
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    setattr(config, limit, max(getattr(config, limit), RECOMPILE_LIMIT))
    mode = "reduce-overhead" if device_type == "cuda" and backend == "inductor" else None
    return torch.compile(_step, backend=backend, mode=mode, fullgraph=True, dynamic=False)


def run_step(compile: bool | str, model, input_ids, attention_mask, position_ids, cache_position, cache):
    """Logits [B, T, V] of one compiled step; the caller advances the cache. ``compile`` is True
    (inductor) or the name of another torch.compile backend (e.g. "aot_eager", to debug)."""
    step = compiled_step(input_ids.device.type, "inductor" if compile is True else compile)
    if input_ids.is_cuda:
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs have been consumed
    return step(model, input_ids, attention_mask, position_ids, cache_position, cache)
