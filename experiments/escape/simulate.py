"""Particles escaping a double well under the real optimizers, all particles of all settings in one tensor.

The positions are one ``[N, d]`` parameter handed to one optimizer instance. SGD, Adam, InvAdam and DualAdam
update elementwise, so each row keeps its own moments: N independent particles, one optimizer call per step.
The only shared state is DualAdam's global step count, which is the same for every particle anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from landscape import DoubleWell
from torch import Tensor
from torch.optim import Optimizer

from dualadam.optim import PAPER_SWITCH_RATE, DualAdam, InvAdam


@dataclass(frozen=True)
class EscapeOptimizer:
    """An optimizer of the escape study and what diffusion theory assumes about it.

    ``preconditioner_power`` k: once Adam's second moment settles at the noise variance ``sigma^2``, the
    update is ``lr * sigma^k * g`` (SGD k=0, Adam k=-1, InvAdam k=+1). It sets the learning rate that matches
    SGD's temperature at the reference basin. ``stationary`` is False when the rule itself changes over time
    (DualAdam's blend), so no single escape rate exists to predict.
    """

    name: str
    build: Callable[[list[Tensor], float, float], Optimizer]   # (params, lr, switch_rate) -> optimizer
    preconditioner_power: int
    stationary: bool


ESCAPE_OPTIMIZERS: dict[str, EscapeOptimizer] = {spec.name: spec for spec in (
    EscapeOptimizer("sgd", lambda params, lr, _: torch.optim.SGD(params, lr=lr), 0, True),
    EscapeOptimizer("adam", lambda params, lr, _: torch.optim.Adam(params, lr=lr), -1, True),
    EscapeOptimizer("invadam", lambda params, lr, _: InvAdam(params, lr=lr), 1, True),
    # DualAdam ends as Adam and, as in the paper, shares Adam's learning rate.
    EscapeOptimizer("dualadam", lambda params, lr, rate: DualAdam(params, lr=lr, switch_rate=rate), -1, False),
)}


def escape_optimizer(name: str) -> EscapeOptimizer:
    if name not in ESCAPE_OPTIMIZERS:
        raise ValueError(f"Unknown escape optimizer {name!r}; valid: {sorted(ESCAPE_OPTIMIZERS)}")
    return ESCAPE_OPTIMIZERS[name]


@dataclass(frozen=True)
class FirstPassage:
    """Right-censored first-passage times, one per particle, as survival data (time, event).

    ``steps[i]``: the optimizer step after which particle i first reached the other minimum, or
    ``max_steps`` when it never did within the run (then ``escaped[i]`` is False: it is censored, not escaped).
    """

    steps: Tensor     # [N] int64
    escaped: Tensor   # [N] bool
    max_steps: int


def simulate_escape(well: DoubleWell, optimizer: str, *, lr: float, max_steps: int, seed: int,
                    switch_rate: float = PAPER_SWITCH_RATE, check_every: int = 1000) -> FirstPassage:
    """Run every particle of ``well`` from its left minimum for up to ``max_steps`` steps.

    The noise comes from a generator seeded with ``seed``, so the same seed gives every optimizer the same
    noise draws (common random numbers) and the run is deterministic. Stops early once every particle has
    escaped; the loop never syncs with the host otherwise.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps={max_steps} must be >= 1")
    position = well.start().requires_grad_(True)
    stepper = escape_optimizer(optimizer).build([position], lr, switch_rate)
    generator = torch.Generator().manual_seed(seed)
    never = max_steps + 1
    first = torch.full(well.curvature.shape, never, dtype=torch.long)
    with torch.no_grad():
        along = well.coordinate(position)
    for step in range(1, max_steps + 1):
        with torch.no_grad():
            position.grad = well.gradient(position, along) + well.sample_noise(generator)
        stepper.step()
        with torch.no_grad():
            along = well.coordinate(position)
            first = torch.minimum(first, torch.where(along >= well.half_width, step, never))
        if step % check_every == 0 and bool((first < never).all()):
            break
    escaped = first < never
    return FirstPassage(torch.where(escaped, first, max_steps), escaped, max_steps)
