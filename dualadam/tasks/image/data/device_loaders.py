"""Loaders over a dataset held on the training device as one uint8 tensor: no workers, no copies, no host sync.

Training order and augmentation are pure functions of (seed, epoch) (``device_transforms.draw_epoch_plan``).

Sharding across ``world_size`` ranks keeps DDP equivalent to one process at the same *global* batch: the
epoch's order is cut into global batches of ``batch_size * world_size`` positions, and rank ``r`` takes the
``r``-th contiguous slice of each. So the ranks' batch ``k`` together are exactly the single-process global
batch ``k``, with the same crops and flips. A last, short global batch is split as evenly as possible (slice
lengths differ by at most one); a rank whose slice of it is empty has one batch fewer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from dualadam.tasks.image.data.device_transforms import Normalizer, draw_epoch_plan, gather_augmented


@contextmanager
def one_thread_on_cpu(device: torch.device):
    """Make a batch with one intra-op thread when the pixels live on the CPU.

    The batch ops are small and memory-bound: a parallel region saves little, and on a busy host a descheduled
    worker thread stalls every one of them (measured on 2 shared cores: ~1 ms per CIFAR batch on one thread,
    11-33 ms on two). The model's own ops, between batches, keep every thread.
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def rank_slice(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous part of positions ``[start, stop)`` (parts differ in length by at most one)."""
    base, extra = divmod(stop - start, world_size)
    first = start + rank * base + min(rank, extra)
    return first, first + base + (rank < extra)


class DeviceEpochLoader:
    """The training loader: batches of (images [B, C, H, W] in the compute dtype, int64 labels [B]), on the
    pixels' device. ``set_epoch(epoch, start_batch=k)`` starts the epoch at batch ``k`` (a mid-epoch resume):
    what follows is exactly batches ``k, k+1, ...`` of the uninterrupted epoch."""

    def __init__(self, pixels: Tensor, labels: Tensor, normalize: Normalizer, *, batch_size: int, seed: int,
                 augmentation: str, padding: int = 4, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.pixels, self.labels, self.normalize = pixels, labels, normalize  # uint8 [N, C, H, W], int64 [N]
        self.batch_size, self.seed, self.augmentation, self.padding = batch_size, seed, augmentation, padding
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self.epoch, self.start_batch = epoch, start_batch

    def batch_positions(self) -> list[tuple[int, int]]:
        """This rank's batches as [start, stop) positions in the epoch's order (host integers)."""
        global_batch = self.batch_size * self.world_size
        bounds = [rank_slice(start, min(start + global_batch, len(self.labels)), self.rank, self.world_size)
                  for start in range(0, len(self.labels), global_batch)]
        return [(start, stop) for start, stop in bounds if stop > start]

    def __len__(self) -> int:
        return len(self.batch_positions())

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        plan = draw_epoch_plan(len(self.labels), self.seed, self.epoch, self.augmentation, self.padding)
        plan = plan.to(self.pixels.device)
        for start, stop in self.batch_positions()[self.start_batch:]:
            part = slice(start, stop)
            with one_thread_on_cpu(self.pixels.device):
                indices = plan.order[part]
                images = gather_augmented(
                    self.pixels, indices, None if plan.tops is None else plan.tops[part],
                    None if plan.lefts is None else plan.lefts[part],
                    None if plan.flips is None else plan.flips[part], self.padding)
                batch = self.normalize(images), self.labels.index_select(0, indices)
            yield batch


class DeviceEvalLoader:
    """Evaluation batches in a fixed order, without augmentation; iterable any number of times.

    ``indices`` (int64, on the pixels' device) selects a subset (the train-eval set) without copying pixels.
    """

    def __init__(self, pixels: Tensor, labels: Tensor, normalize: Normalizer, *, batch_size: int,
                 indices: Tensor | None = None):
        self.pixels, self.labels, self.normalize = pixels, labels, normalize
        self.batch_size, self.indices = batch_size, indices

    def _count(self) -> int:
        return len(self.labels) if self.indices is None else len(self.indices)

    def __len__(self) -> int:
        return -(-self._count() // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, self._count(), self.batch_size):
            part = slice(start, start + self.batch_size)
            with one_thread_on_cpu(self.pixels.device):
                if self.indices is None:
                    batch = self.normalize(self.pixels[part]), self.labels[part]
                else:
                    indices = self.indices[part]
                    batch = self.normalize(self.pixels.index_select(0, indices)), self.labels.index_select(0, indices)
            yield batch


def to_device(pixels, labels, device: torch.device) -> tuple[Tensor, Tensor]:
    """uint8 numpy pixels [N, H, W, C] and int labels [N] -> device tensors uint8 [N, C, H, W], int64 [N]."""
    images = torch.as_tensor(pixels).to(device).permute(0, 3, 1, 2).contiguous()  # transposed on the device
    return images, torch.as_tensor(labels, dtype=torch.int64).to(device)
