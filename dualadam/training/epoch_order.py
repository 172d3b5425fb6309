"""The order a training loader takes: a pure function of (seed, epoch), the same for every task.

A resumed run, or a data-parallel one, sees the same examples in the same order as an uninterrupted one, whatever
the task: the image loaders and the LLM loader both draw their epochs from :class:`EpochSampler`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

SampleKey = tuple[int, int]  # (index into the source, augmentation seed)


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (so (seed, epoch) and (seed + 1, epoch - 1) do not collide)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


class EpochSampler(Sampler[SampleKey]):
    """This rank's share of a seeded permutation of ``range(num_samples)``, redrawn by ``set_epoch``.

    Rank ``r`` of ``world_size`` takes positions ``r, r + world_size, ...`` of the epoch's permutation, so the
    shards are disjoint and together cover every sample once (their lengths differ by at most one).
    """

    def __init__(self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.num_samples, self.seed, self.rank, self.world_size = num_samples, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))

    def __iter__(self) -> Iterator[SampleKey]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_samples, generator=generator)
        aug_seeds = torch.randint(0, 2**62, (self.num_samples,), generator=generator)
        shard = order[self.rank :: self.world_size]
        return iter(zip(shard.tolist(), aug_seeds[shard].tolist(), strict=True))

