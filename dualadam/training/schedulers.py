"""Learning-rate schedules as data: a name maps to a pure function of the optimizer step count.

Every schedule is a multiplier on the configured lr, evaluated before each optimizer step from the number of
steps already taken, so any schedule composes with a linear warmup and a resumed run only needs the step
count (torch's ``LambdaLR`` state). Per-epoch schedules hold the multiplier constant within an epoch.

``cosine_epoch`` is the paper's ``CosineAnnealingLR(T_max=epochs, eta_min=lr * min_lr_ratio)`` stepped once
per epoch, in closed form (``tests/test_configs.py`` checks it against torch's class).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from torch.optim.lr_scheduler import LambdaLR


@dataclass(frozen=True)
class TrainingLength:
    steps_per_epoch: int
    epochs: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch


def _cosine(progress: float, min_lr_ratio: float) -> float:
    """Half-cosine from 1 at ``progress=0`` to ``min_lr_ratio`` at ``progress=1``."""
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_epoch(step: int, length: TrainingLength, *, min_lr_ratio: float) -> float:
    return _cosine(length.epoch_of(step) / length.epochs, min_lr_ratio)


def cosine_warmup(step: int, length: TrainingLength, *, warmup_epochs: float, min_lr_ratio: float) -> float:
    """Per step: linear warmup over ``warmup_epochs`` (fractions allowed), then cosine to the end."""
    warmup = round(warmup_epochs * length.steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    return _cosine((step - warmup) / max(1, length.total_steps - warmup), min_lr_ratio)


def multistep(step: int, length: TrainingLength, *, milestones: list[int], gamma: float) -> float:
    """Multiply by ``gamma`` at each milestone epoch (the classic CIFAR step decay)."""
    epoch = length.epoch_of(step)
    return gamma ** sum(epoch >= milestone for milestone in milestones)


def constant(step: int, length: TrainingLength) -> float:
    return 1.0


LRSchedule = Callable[..., float]
SCHEDULES: dict[str, LRSchedule] = {
    "cosine_epoch": cosine_epoch,
    "cosine_warmup": cosine_warmup,
    "step": multistep,
    "constant": constant,
}


def linear_warmup(step: int, warmup_steps: int) -> float:
    """The k-th optimizer step (``step = k - 1`` taken before it) runs at ``k / warmup_steps`` of the lr.

    That is DualAdam's Adam share ``1 - alpha_k = k * switch_rate`` when ``warmup_steps = 1 / switch_rate``.
    """
    if step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


def lr_multiplier(scheduler_cfg: DictConfig, length: TrainingLength, warmup_steps: int = 0
                  ) -> Callable[[int], float]:
    """The lr multiplier as a function of steps taken: the named schedule times the optimizer's warmup."""
    params = OmegaConf.to_container(scheduler_cfg, resolve=True)
    schedule = SCHEDULES[params.pop("name")]

    def multiplier(step: int) -> float:
        return schedule(step, length, **params) * linear_warmup(step, warmup_steps)

    return multiplier


def build_lr_scheduler(scheduler_cfg: DictConfig, optimizer: torch.optim.Optimizer, length: TrainingLength,
                       warmup_steps: int = 0) -> LambdaLR:
    """A scheduler to ``step()`` after every optimizer step."""
    return LambdaLR(optimizer, lr_multiplier(scheduler_cfg, length, warmup_steps))
