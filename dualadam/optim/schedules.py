"""Mixing schedules: the weight ``alpha_t`` of the inverse-Adam term after ``t`` optimizer steps.

DualAdam's update is ``lr * ((1 - alpha_t) * adam + alpha_t * inverse)``. A schedule maps the global step
count ``t`` (1-based: the step being taken) and ``switch_rate`` (xi) to ``alpha_t``. Whatever the schedule,
the authors' hard hand-over applies on top: once ``alpha_t < switch_rate`` the update is plain Adam
(``alpha_t = 0``), exactly as in their released ``DualAdam.py``.

``linear`` is the paper's and the reference code's schedule; ``1 / switch_rate`` steps is the blend length.

Schedules take a Python int step in eager mode and a 0-d tensor step when the caller ``torch.compile``s
``optimizer.step()``; the built-in ones work on both (torch ops on tensors, so the graph has no
data-dependent branch). A registered schedule that should work under ``torch.compile`` must do the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

MixingSchedule = Callable[[int, float], float]


def linear(step: int, switch_rate: float) -> float:
    """The paper's schedule. The expression is the reference's, so float rounding at the hand-over matches."""
    if isinstance(step, torch.Tensor):
        return (1.0 - step * switch_rate).clamp_min(0.0)
    return max(0.0, 1.0 - step * switch_rate)


def cosine(step: int, switch_rate: float) -> float:
    """Half-cosine from 1 to 0 over the same ``1 / switch_rate`` steps: a gentler start and end."""
    if isinstance(step, torch.Tensor):
        return 0.5 * (1.0 + torch.cos(math.pi * (step * switch_rate).clamp_max(1.0)))
    progress = min(1.0, step * switch_rate)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def constant(step: int, switch_rate: float) -> float:
    """Always the inverse update (InvAdam)."""
    return 1.0


MIXING_SCHEDULES: dict[str, MixingSchedule] = {"linear": linear, "cosine": cosine, "constant": constant}


def register_mixing_schedule(name: str, schedule: MixingSchedule) -> None:
    """Make ``schedule`` selectable by ``name``. Schedules are stored by name so state_dicts stay picklable."""
    MIXING_SCHEDULES[name] = schedule


def check_schedule_name(name: str) -> None:
    if name not in MIXING_SCHEDULES:
        valid = ", ".join(sorted(MIXING_SCHEDULES))
        raise ValueError(f"Unknown mixing schedule {name!r}; valid schedules: {valid}")


def inverse_adam_rate(schedule: str, step: int, switch_rate: float) -> float:
    """alpha_t for ``step`` (1-based), with the reference's cut-off: below ``switch_rate`` it is 0 (pure Adam)."""
    alpha = MIXING_SCHEDULES[schedule](step, switch_rate)
    if isinstance(alpha, torch.Tensor):
        return torch.where(alpha >= switch_rate, alpha, 0.0)
    return alpha if alpha >= switch_rate else 0.0


def blend_steps(switch_rate: float) -> float:
    """How many steps the linear blend lasts: ``1 / switch_rate`` (infinite for 0, i.e. InvAdam forever)."""
    return math.inf if switch_rate == 0 else 1.0 / switch_rate
