"""A shuffling, rank-aware sampler whose position survives a checkpoint.

Lightning restarts an epoch's iterator from the beginning on resume; this sampler instead skips
the batches already consumed, so k steps + resume + (N - k) steps equals N steps straight through.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, num_samples: int, batch_size: int, seed: int, shuffle: bool = True):
        self.num_samples, self.batch_size, self.seed, self.shuffle = num_samples, batch_size, seed, shuffle
        self.epoch = 0
        self.skip_batches = 0
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if distributed else 0
        self.world_size = dist.get_world_size() if distributed else 1

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch: a new permutation per epoch."""
        self.epoch = epoch

    def resume(self, epoch: int, batches_done: int) -> None:
        self.epoch, self.skip_batches = epoch, batches_done

    def __len__(self) -> int:
        # the full epoch, even when resuming: Lightning counts restored batches towards it
        return self.num_samples // self.world_size

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        order = order[self.rank : len(self) * self.world_size : self.world_size]
        start, self.skip_batches = self.skip_batches * self.batch_size, 0
        return iter(order[start:].tolist())
