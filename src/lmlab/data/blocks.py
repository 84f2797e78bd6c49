"""Fixed-length training examples cut from a memory-mapped token file."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class TokenBlocks(Dataset):
    """Windows of ``block_size + 1`` tokens from ``tokens[start:stop]``, each a LongTensor.

    A window ``x`` is one example: ``inputs = x[:-1]``, ``targets = x[1:]``. Window ``i`` starts at
    ``start + i * block_size``, so the inputs of consecutive windows do not overlap and each window's last
    token is the next one's first: every token after the first is a target exactly once. The memory map
    opens on first access and is not pickled, so the dataset moves cheaply to workers and spawned ranks.
    """

    def __init__(self, path: str, dtype: str, start: int, stop: int, block_size: int):
        self.path = path
        self.dtype = dtype
        self.start = start
        self.stop = stop
        self.block_size = block_size
        self._tokens: np.memmap | None = None

    def __len__(self) -> int:
        return max(0, (self.stop - self.start - 1) // self.block_size)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} is out of range for {len(self)} blocks")
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        first = self.start + index * self.block_size
        return torch.from_numpy(self._tokens[first : first + self.block_size + 1].astype(np.int64))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}
