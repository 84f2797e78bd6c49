"""Counting a model's parameters the two ways scaling laws do."""

from __future__ import annotations

from typing import Literal

import torch.nn as nn

# which N a fit uses: every parameter (Hoffmann et al.) or all but the embedding tables (Kaplan et al.)
ParamsKind = Literal["total", "non_embedding"]
PARAMS_KINDS: tuple[str, ...] = ("total", "non_embedding")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, non-embedding) parameters of any torch model, also one built on the meta device.

    Total counts every parameter once (a tied LM head shares the embedding's tensor and counts once). With
    tied embeddings and no learned position table that is also the N of C = 6 N D: every weight is a matmul
    weight. Non-embedding leaves out the weights of every ``nn.Embedding`` (token and learned position
    tables; a tied head is that same tensor, so it goes too): Kaplan et al.'s N.
    """
    total = sum(p.numel() for p in model.parameters())
    tables = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding)}
    return total, total - sum(tables.values())
