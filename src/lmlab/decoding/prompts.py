"""What every decoding strategy takes besides its settings: the prompt tensor (checked before the first
model call) and the end-of-sequence and padding ids."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_prompt(model, input_ids, max_new_tokens, attention_mask=None) -> None:
    """Prompts are a non-empty [batch, length] integer tensor, left-padded, that fits the context."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be an integer tensor [batch, prompt_len]; got {shape}")
    batch, prompt_len = input_ids.shape
    if batch == 0 or prompt_len == 0:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}); give >= 1 token per row")
    if prompt_len + max_new_tokens > model.max_seq_len:
        raise ValueError(
            f"prompt length {prompt_len} + max_new_tokens={max_new_tokens} exceeds the model's context "
            f"(max_seq_len={model.max_seq_len})"
        )
    if attention_mask is None:
        return
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    mask = attention_mask.bool()
    if not mask.any(-1).all():
        rows = (~mask.any(-1)).nonzero().flatten().tolist()
        raise ValueError(f"attention_mask rows {rows} are all padding (empty prompts)")
    if (mask[:, 1:] < mask[:, :-1]).any():
        raise ValueError("attention_mask must be LEFT-padded (zeros only before the first real token)")


def eos_ids(eos_token_id, device) -> torch.Tensor | None:
    """None, an int or several ids -> a 1-D LongTensor (or None: never stop early)."""
    if eos_token_id is None:
        return None
    if isinstance(eos_token_id, int):
        eos_token_id = [eos_token_id]
    if isinstance(eos_token_id, torch.Tensor):
        eos_token_id = eos_token_id.flatten().tolist()
    if not isinstance(eos_token_id, Sequence) or not eos_token_id or not all(
        isinstance(i, int) and i >= 0 for i in eos_token_id
    ):
        raise ValueError(f"eos_token_id={eos_token_id!r}; must be None, an id >= 0 or a list of ids")
    return torch.tensor(eos_token_id, dtype=torch.long, device=device)


def pad_id(model, pad_token_id, eos: torch.Tensor | None) -> int:
    """Token written after a row has finished: explicit, else the model's pad id, else EOS (as HF)."""
    if pad_token_id is None:
        pad_token_id = getattr(getattr(model, "config", None), "pad_token_id", None)
    if pad_token_id is None and eos is not None:
        pad_token_id = int(eos[0])
    return 0 if pad_token_id is None else int(pad_token_id)
