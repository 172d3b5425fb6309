"""Loaders: a training loader whose order and augmentation are pure functions of (seed, epoch), and fixed
evaluation loaders.

Reproducibility does not depend on ``num_workers``: the sampler draws the epoch's order and one augmentation
seed per sample from (seed, epoch); each batch seeds the random transforms with its first sample's seed. So a
run resumed at epoch ``e`` sees exactly the batches and crops an uninterrupted run sees, with any worker count.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dualadam.tasks.image.data.sources import ImageSource
from dualadam.training.epoch_order import EpochSampler, SampleKey


class TransformedImages(Dataset):
    """A source seen through a transform. Keys are indices (deterministic transforms) or ``SampleKey`` pairs."""

    def __init__(self, source: ImageSource, transform):
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | SampleKey) -> tuple[Tensor, int]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[int | SampleKey]) -> list[tuple[Tensor, int]]:
        # DataLoader calls this once per batch. Seeding costs ~60 us, so it is done once per batch, inside
        # fork_rng so that the caller's global RNG (e.g. with num_workers=0) is left untouched.
        if not keys or not isinstance(keys[0], tuple):
            return [self._transformed(int(k)) for k in keys]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(keys[0][1])
            return [self._transformed(index) for index, _ in keys]

    def _transformed(self, index: int) -> tuple[Tensor, int]:
        image, label = self.source[index]
        return self.transform(image), label


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; give python and numpy the same seed, for any
    # user transform that draws from them.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _data_loader(dataset: Dataset, batch_size: int, num_workers: int, sampler=None, seed: int = 0) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=False,
        num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
        worker_init_fn=_seed_worker, generator=torch.Generator().manual_seed(seed),
    )


class ShuffledEpochLoader:
    """The training loader: batches of (normalized float images [B, C, S, S], int64 labels [B])."""

    def __init__(self, dataset: TransformedImages, batch_size: int, num_workers: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.sampler = EpochSampler(len(dataset), seed, rank, world_size)
        self.loader = _data_loader(dataset, batch_size, num_workers, sampler=self.sampler, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def eval_loader(dataset: TransformedImages, batch_size: int, num_workers: int) -> DataLoader:
    """A loader over ``dataset`` in its fixed order, without randomness; iterable any number of times."""
    return _data_loader(dataset, batch_size, num_workers)
