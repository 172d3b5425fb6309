"""Batches of encoded examples: a training loader shuffled per (seed, epoch), and fixed evaluation batches.

Tokenization happens once, up front (the sequences are short and few), so iterating is only padding and
stacking; there are no worker processes and nothing random outside the epoch's permutation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from dualadam.tasks.llm.tokenization import EncodedExample, collate_for_loss, collate_prompts
from dualadam.training.epoch_order import EpochSampler


class PromptResponseLoader:
    """Training batches (see ``collate_for_loss``) in an order that is a pure function of (seed, epoch).

    It shards like the image loaders (rank ``r`` takes every ``world_size``-th sample of the epoch's
    permutation), so a resumed or data-parallel run sees the same examples as an uninterrupted one.
    """

    def __init__(self, encoded: Sequence[EncodedExample], batch_size: int, pad_id: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.encoded, self.batch_size, self.pad_id = list(encoded), batch_size, pad_id
        self.sampler = EpochSampler(len(self.encoded), seed, rank, world_size)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = [index for index, _ in self.sampler]  # the sampler's augmentation seeds are unused for text
        for start in range(0, len(order), self.batch_size):
            chunk = [self.encoded[i] for i in order[start:start + self.batch_size]]
            yield collate_for_loss(chunk, self.pad_id)


def evaluation_batches(encoded: Sequence[EncodedExample], batch_size: int, pad_id: int) -> list[dict[str, Any]]:
    """Fixed batches for loss and generation: ``collate_for_loss`` and ``collate_prompts`` tensors, plus
    ``examples`` (the batch's :class:`Example` objects, for exact match). A list, so it can be iterated again."""
    batches = []
    for start in range(0, len(encoded), batch_size):
        chunk = list(encoded[start:start + batch_size])
        batches.append({**collate_for_loss(chunk, pad_id), **collate_prompts(chunk, pad_id),
                        "examples": [e.example for e in chunk]})
    return batches
