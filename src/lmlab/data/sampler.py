"""A shuffle order that a resumed run reproduces exactly, also under DDP."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


class ResumableShuffleSampler(DistributedSampler):
    """Seeded shuffle whose order depends only on ``(seed, epoch)`` and that can start mid-epoch.

    A ``RandomSampler`` with a seeded generator replays the first epoch's order after a restart; here
    each epoch's permutation is drawn from ``seed + epoch`` (``set_epoch`` is called by Lightning), and
    in ``resume_epoch`` the first ``resume_samples`` indices of this rank are skipped, so a resumed run
    sees the same batches as an uninterrupted one. ``len()`` stays the full epoch because Lightning keeps
    counting batches from where the checkpoint left off.

    It subclasses ``DistributedSampler`` so Lightning does not replace it under DDP; it shards by rank
    itself (one replica when no process group is initialised) and drops the uneven tail.
    """

    def __init__(self, dataset: Dataset, seed: int, resume_epoch: int = 0, resume_samples: int = 0):
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            dataset,
            num_replicas=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.resume_epoch = resume_epoch
        self.resume_samples = resume_samples

    def __iter__(self) -> Iterator[int]:
        indices = super().__iter__()
        if self.epoch == self.resume_epoch and self.resume_samples:
            return itertools.islice(indices, self.resume_samples, None)
        return indices
