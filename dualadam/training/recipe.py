"""The training-recipe options the loop applies alike for every optimizer: gradient accumulation and clipping.

``trainer.grad_accum_steps = k`` groups an epoch's batches (micro-batches) into windows of ``k``: each
micro-batch's mean loss is scaled by ``1 / (window size)`` before its backward, and one optimizer step and one
scheduler step follow each window's last micro-batch. Windows never cross an epoch: when an epoch's batch
count is not a multiple of ``k``, its last window is shorter and steps with the micro-batches it has, each
scaled by ``1 / (its size)`` (so the step follows their mean loss, as a full window does). Every step count
(the scheduler, warmup, DualAdam's alpha, ``optim/steps``, ``trainer.check_every``) counts optimizer steps,
``ceil(batches / k)`` per epoch. With equal-sized micro-batches and no batch-dependent layers, a window is the
step on their concatenated batch, up to float rounding; batch norm sees each micro-batch alone.

``trainer.grad_clip_norm = c`` rescales the gradients of a window's step so that their global 2-norm (over
every parameter the optimizer updates) is at most ``c`` (``torch.nn.utils.clip_grad_norm_``): after the last
micro-batch's backward, after fp16's loss scale is taken out (``GradScaler.unscale_``) and, with several
processes, after DDP has averaged the gradients, so every rank clips the same gradients alike. The norm
before clipping is recorded per epoch as ``train/grad_norm`` (the mean over the epoch's steps whose norm was
finite).

The effective batch of one optimizer step is ``trainer.batch_size`` (the global batch, all ranks together)
times ``grad_accum_steps``: ``summary.json``'s ``effective_batch_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig


@dataclass(frozen=True)
class Recipe:
    """The trainer's recipe options (defaults: off)."""

    grad_accum_steps: int = 1
    grad_clip_norm: float | None = None

    @classmethod
    def from_config(cls, trainer: DictConfig) -> Recipe:
        clip = trainer.get("grad_clip_norm")
        return cls(grad_accum_steps=int(trainer.get("grad_accum_steps", 1)),
                   grad_clip_norm=None if clip is None else float(clip))

    def optimizer_steps_per_epoch(self, batches: int) -> int:
        return math.ceil(batches / self.grad_accum_steps)

    def window(self, batch: int, batches: int) -> Window:
        """The window of the epoch's ``batch``-th micro-batch (1-based) in an epoch of ``batches``."""
        k = self.grad_accum_steps
        first = (batch - 1) // k * k + 1
        last = min(first + k - 1, batches)
        return Window(size=last - first + 1, starts=batch == first, ends=batch == last)


def effective_batch_size(trainer: DictConfig) -> int | None:
    """Samples per optimizer step: the global ``trainer.batch_size`` times ``trainer.grad_accum_steps``; None
    for a config that validation rejects (its failure is still recorded)."""
    batch, accum = trainer.get("batch_size"), trainer.get("grad_accum_steps", 1)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (batch, accum)):
        return None
    return batch * accum


@dataclass(frozen=True)
class Window:
    """Where a micro-batch sits in its accumulation window."""

    size: int     # micro-batches in the window
    starts: bool  # the first: gradients are zeroed before its backward
    ends: bool    # the last: the optimizer steps after its backward

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """The micro-batch's share of the window's mean loss (``loss`` itself without accumulation, so the
        default recipe runs exactly the arithmetic it always did)."""
        return loss if self.size == 1 else loss / self.size


class GradNormTotals:
    """The pre-clipping gradient norms of an epoch's steps, summed on the device (no host sync per step)."""

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.steps = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, norm: torch.Tensor) -> None:
        """A step whose gradients overflowed (fp16: the scaler skips it) has no finite norm; it is left out."""
        finite = torch.isfinite(norm)
        self.total += torch.where(finite, norm.detach().double(), 0.0)
        self.steps += finite.to(torch.int64)

    def mean(self) -> float:
        steps = int(self.steps)
        return float(self.total) / steps if steps else float("nan")

    def state(self) -> dict:
        return {"grad_norm_total": self.total.cpu(), "grad_norm_steps": self.steps.cpu()}

    @classmethod
    def restore(cls, state: dict, device: torch.device) -> GradNormTotals | None:
        """From ``state()``; None from a checkpoint without the sums (a run without clipping)."""
        if "grad_norm_total" not in state:
            return None
        totals = cls(device)
        totals.total = state["grad_norm_total"].to(device)
        totals.steps = state["grad_norm_steps"].to(device)
        return totals
