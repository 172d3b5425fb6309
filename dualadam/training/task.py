"""What the trainer needs from a task: a model, data, a training step and an evaluation.

The trainer core (epoch loop, metrics, outputs, W&B) knows nothing about images or text and imports no task.
A task reaches the core as a :class:`TaskDefinition`, which the caller picks (``dualadam.tasks`` is the
registry ``cfg.task`` names): the core checks the config with it, then builds the :class:`Task` with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from omegaconf import DictConfig
from torch import nn

if TYPE_CHECKING:
    from dualadam.training.runtime import Runtime


class EpochLoader(Protocol):
    """The training loader: its order is a pure function of (seed, epoch), so a resumed run sees the same data."""

    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...


class Task(Protocol):
    model: nn.Module            # on the runtime's device, unwrapped (the trainer may compile or wrap it)
    train_loader: EpochLoader
    eval_loaders: dict[str, Iterable]  # "train_eval", "test", and "val" when a validation split is held out;
                                       # each iterable repeatedly

    def training_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Forward one batch: (mean loss to backpropagate, 0-d count of correct predictions, batch size).

        Runs under the trainer's autocast. Must not sync with the host (no ``.item()``)."""
        ...

    def evaluate(self, model: nn.Module, loader: Iterable) -> dict[str, float]:
        """``{"loss": mean per sample, "acc": percent}`` over ``loader``; the model is already in eval mode,
        under ``torch.no_grad`` and autocast."""
        ...


@dataclass(frozen=True)
class TaskDefinition:
    """A task before it is built: how to check its part of the config, and how to build it."""

    name: str                                       # the value of ``cfg.task``
    build: Callable[[DictConfig, Runtime], Task]    # on this rank's config; may import the task's heavy stack
    check_config: Callable[[DictConfig], None]      # the task's keys (model, dataset, ...): raises
                                                    # ``validation.ConfigError`` naming key, problem and fix
    holds_validation_split: Callable[[DictConfig], bool]  # whether ``eval_loaders`` will have "val"


def model_checkpoint_state(task: Task) -> dict[str, torch.Tensor]:
    """The model tensors a checkpoint keeps: the task's own choice if it defines ``checkpoint_state`` (LoRA keeps
    only the adapters), else the whole ``state_dict``."""
    own = getattr(task, "checkpoint_state", None)
    return own() if own is not None else task.model.state_dict()


def restore_model_checkpoint_state(task: Task, state: dict[str, torch.Tensor]) -> None:
    """Put :func:`model_checkpoint_state`'s tensors back into ``task.model``."""
    own = getattr(task, "load_checkpoint_state", None)
    if own is not None:
        own(state)
    else:
        task.model.load_state_dict(state)
