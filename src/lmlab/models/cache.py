"""A preallocated key/value cache for lmlab's GPT, dynamic or static.

Buffers are allocated once for the whole generation (no per-token torch.cat), and the method
names follow Hugging Face's ``DynamicCache`` so decoding code treats every cache alike. Attention
reads one of two views of the same buffers:

- dynamic (``static=False``): the filled prefix, so every step has a new shape; cheapest eagerly.
- static (``static=True``, gpt-fast style): the whole buffer under a mask, chunks written through
  an index (``cache_position``). The one-token step then has one shape for the whole generation,
  so it compiles once and can be captured as a CUDA graph. Rolling back (rejected draft tokens)
  only moves the position: entries past it are masked and later overwritten.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer, batch_size, n_kv_head, max_len, head_dim, dtype=torch.float32, device=None,
                 static: bool = False):
        shape = (batch_size, n_kv_head, max_len, head_dim)
        with torch.inference_mode(False):  # reusable outside inference mode too (see decoding.compiled)
            self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
            self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.static = static
        self.length = 0
        self._mark_static()

    def _mark_static(self) -> None:
        """CUDA graphs may write into these buffers only when they keep one address (see torch.compile)."""
        if self.static and self.keys[0].is_cuda:
            import torch._dynamo

            for t in self.keys + self.values:
                torch._dynamo.mark_static_address(t)

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, cache_position: torch.Tensor):
        """Write this chunk at ``cache_position`` [T]; return the keys/values attention reads: the filled
        prefix up to the chunk's end (dynamic) or the whole buffer (static)."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self.static:
            keys.index_copy_(2, cache_position, k)
            values.index_copy_(2, cache_position, v)
            return keys, values
        end = self.length + k.shape[2]
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, n: int) -> None:
        """Called once every layer has written its chunk (by the model, or by whoever chose the positions)."""
        self.length += n

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` positions (negative: drop that many), as DynamicCache.crop."""
        self.length = self.length + max_length if max_length < 0 else min(self.length, max_length)

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Row i becomes old row ``beam_idx[i]``, in place (the buffers keep their addresses)."""
        for t in self.keys + self.values:
            t.copy_(t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (the batch may shrink), as DynamicCache.batch_select_indices."""
        self.keys = [k[indices.to(k.device)] for k in self.keys]
        self.values = [v[indices.to(v.device)] for v in self.values]
        self._mark_static()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.keys = [k.repeat_interleave(repeats, dim=0) for k in self.keys]
        self.values = [v.repeat_interleave(repeats, dim=0) for v in self.values]
        self._mark_static()

    def copy_from(self, other: KVCache, repeats: int = 1) -> None:
        """Take ``other``'s content, each row repeated ``repeats`` times, into these buffers (same addresses)."""
        for mine, theirs in zip(self.keys + self.values, other.keys + other.values, strict=True):
            mine.copy_(theirs.repeat_interleave(repeats, dim=0) if repeats > 1 else theirs)
        self.length = other.length
