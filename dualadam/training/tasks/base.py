"""What the trainer needs from a task: a model, data, a training step and an evaluation.

The trainer core (epoch loop, metrics, outputs, W&B) knows nothing about images or text. Image classification
is one task; LLM fine-tuning plugs in as another with its own loaders, loss and evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import torch
from torch import nn


class EpochLoader(Protocol):
    """The training loader: its order is a pure function of (seed, epoch), so a resumed run sees the same data."""

    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...


class Task(Protocol):
    model: nn.Module            # on the runtime's device, unwrapped (the trainer may compile or wrap it)
    train_loader: EpochLoader
    eval_loaders: dict[str, Iterable]  # must hold "train_eval" and "test"; each iterable repeatedly

    def training_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Forward one batch: (mean loss to backpropagate, 0-d count of correct predictions, batch size).

        Runs under the trainer's autocast. Must not sync with the host (no ``.item()``)."""
        ...

    def evaluate(self, model: nn.Module, loader: Iterable) -> dict[str, float]:
        """``{"loss": mean per sample, "acc": percent}`` over ``loader``; the model is already in eval mode,
        under ``torch.no_grad`` and autocast."""
        ...
