"""A preallocated key/value cache for lmlab's GPT.

Buffers are allocated once for the whole generation (no per-token torch.cat), and the method
names follow Hugging Face's ``DynamicCache`` so decoding code treats both caches alike.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer, batch_size, n_kv_head, max_len, head_dim, dtype=torch.float32, device=None):
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        """Write this chunk after the cached prefix; return keys/values of prefix + chunk."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} requested")
        self.keys[layer_idx][:, :, self.length:end] = k
        self.values[layer_idx][:, :, self.length:end] = v
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def advance(self, n: int) -> None:
        """Called by the model once every layer has written its chunk."""
        self.length += n

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` positions (negative: drop that many), as DynamicCache.crop."""
        self.length = self.length + max_length if max_length < 0 else min(self.length, max_length)

    def _map(self, fn) -> None:
        self.keys = [fn(k) for k in self.keys]
        self.values = [fn(v) for v in self.values]

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))
