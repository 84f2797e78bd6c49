"""A causal LM together with its KV cache: prefill once, then feed only the tokens the cache lacks.

All cache, mask and position bookkeeping of the strategies lives here. Unpadded batches pass no
mask and no positions (the model's fast path); left-padded batches keep one [batch, max_len] mask
and derive positions from it as Hugging Face does (cumsum(mask) - 1), so cropping and reordering
the cache only has to crop or reorder that mask.
"""

from __future__ import annotations

import torch


class IncrementalLM:
    def __init__(self, model, batch_size: int, max_len: int, prompt_mask: torch.Tensor | None = None):
        self.model = model
        self.cache = model.new_cache(batch_size, max_len)
        self.length = 0  # positions held by the cache
        self.mask = None
        if prompt_mask is not None and not bool(prompt_mask.all()):
            self.mask = prompt_mask.new_ones(batch_size, max_len)
            self.mask[:, : prompt_mask.shape[1]] = prompt_mask

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for ``tokens`` [B, T], which continue what the cache holds."""
        end = self.length + tokens.shape[1]
        mask = positions = None
        if self.mask is not None:
            mask = self.mask[:, :end]
            positions = (mask.cumsum(-1)[:, self.length :] - 1).clamp_min(0)
        logits = self.model(tokens, attention_mask=mask, position_ids=positions, cache=self.cache).logits
        self.length = end
        return logits

    def keep(self, length: int) -> None:
        """Drop cached positions from ``length`` on (rejected draft tokens); a no-op if already shorter."""
        if length < self.length:
            self.cache.crop(length - self.length)  # negative = drop that many, as DynamicCache.crop
            self.length = length

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i of the batch becomes old row ``rows[i]`` (beam search)."""
        self.cache.reorder_cache(rows)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, rows)

    def repeat_interleave(self, repeats: int) -> None:
        """Each row becomes ``repeats`` adjacent rows (prefill once, then expand to beams)."""
        self.cache.batch_repeat_interleave(repeats)
        if self.mask is not None:
            self.mask = self.mask.repeat_interleave(repeats, dim=0)
