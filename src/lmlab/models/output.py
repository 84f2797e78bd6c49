from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class CausalLMOutput:
    """What every lmlab causal LM returns: logits [B, T, V], the cache it appended to, and
    (when asked for) the final normalised hidden states [B, T, C]."""

    logits: torch.Tensor
    cache: Any = None
    hidden: torch.Tensor | None = None
