"""A causal LM together with its KV cache: prefill once, then feed only the tokens the cache lacks.

All cache, mask and position bookkeeping of the strategies lives here. Unpadded batches pass no
mask and no positions (the model's fast path); left-padded batches keep one [batch, max_len] mask
and derive positions from it as Hugging Face does (cumsum(mask) - 1), so cropping and reordering
the cache only has to crop or reorder that mask.

With ``compile`` (models with a static cache: lmlab's GPT) every forward after the prefill is the
compiled step of the model's :class:`~lmlab.decoding.compiled.StaticDecoder`; other models decode
eagerly, with a warning. Use it as a context manager: leaving it hands the static cache back.
"""

from __future__ import annotations

import warnings

import torch

from lmlab.decoding.compiled import StaticDecoder, supports_static_cache


class IncrementalLM:
    def __init__(self, model, batch_size: int, max_len: int, prompt_mask: torch.Tensor | None = None,
                 compile: bool | str = False):
        self.model = model
        self.decoder = None
        if compile and supports_static_cache(model):
            self.decoder = StaticDecoder.of(model, "inductor" if compile is True else compile)
        elif compile:
            warnings.warn(f"compile=True: {type(model).__name__} has no static KV cache; decoding eagerly",
                          stacklevel=3)
        self.cache = self.decoder.lease(batch_size, max_len) if self.decoder else model.new_cache(batch_size, max_len)
        self.length = 0  # positions held by the cache
        self.mask = self.positions = None
        if prompt_mask is not None and not bool(prompt_mask.all()):
            self.mask = prompt_mask.new_ones(batch_size, max_len)
            self.mask[:, : prompt_mask.shape[1]] = prompt_mask
            self._update_positions()
        if self.decoder:  # sliced for each step's cache_position: no new tensor per token
            self.cache_positions = torch.arange(max_len, device=self.cache.keys[0].device)

    def __enter__(self) -> IncrementalLM:
        return self

    def __exit__(self, *exc) -> None:
        if self.decoder:
            self.decoder.release(self.cache)

    def _update_positions(self) -> None:
        self.positions = (self.mask.cumsum(-1) - 1).clamp_min(0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for ``tokens`` [B, T], which continue what the cache holds."""
        end = self.length + tokens.shape[1]
        positions = None if self.positions is None else self.positions[:, self.length : end]
        if self.decoder and self.length > 0:
            cache_position = self.cache_positions[self.length : end]
            logits = self.decoder.step(tokens, self.mask, positions, cache_position, self.cache)
            self.cache.advance(tokens.shape[1])
        else:
            mask = None if self.mask is None else self.mask[:, :end]
            logits = self.model(tokens, attention_mask=mask, position_ids=positions, cache=self.cache).logits
        self.length = end
        return logits

    def truncate(self, length: int) -> None:
        """Drop cached positions from ``length`` on (rejected draft tokens); a no-op if already shorter."""
        if length < self.length:
            self.cache.crop(length - self.length)  # negative = drop that many, as DynamicCache.crop
            self.length = length

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i of the batch becomes old row ``rows[i]`` (beam search)."""
        self.cache.reorder_cache(rows)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, rows)
            self._update_positions()

    def repeat_interleave(self, repeats: int) -> None:
        """Each row becomes ``repeats`` adjacent rows (prefill once, then expand to beams)."""
        if self.decoder:
            old = self.cache
            self.cache = self.decoder.lease(old.batch_size * repeats, old.max_len)
            self.cache.copy_from(old, repeats)
            self.decoder.release(old)
        else:
            self.cache.batch_repeat_interleave(repeats)
        if self.mask is not None:
            self.mask = self.mask.repeat_interleave(repeats, dim=0)
            self._update_positions()
