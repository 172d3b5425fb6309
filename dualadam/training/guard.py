"""When training must stop early: a non-finite loss (divergence) or a preemption signal.

Divergence is watched on the device: after every step, ``record`` folds the step's loss into ``first_bad_step``,
a 0-d int64 tensor holding the first optimizer step (1-based) whose loss was NaN or infinite, without a host
sync. The host reads it every ``check_every`` steps and at the end of every epoch (``poll``), so a diverged run
stops at most ``check_every - 1`` steps late, and reports the exact step anyway.

A training loss is computed before its update, so the last update before a checkpoint is not covered by it: an
update can blow the weights up (InvAdam at a huge lr reached 1e27) while every training loss was finite. So
before every checkpoint, and so before a run can end ``completed``, ``check_model`` also requires finite
parameters and finite evaluation losses (``check_evaluation``). A diverged state is never saved: the last good
checkpoint stays.

A preemption signal only raises a host flag (``PreemptionFlag``). With one process it is read after every step
(no device sync); with several, ranks must stop at the same step, so they agree at each ``check_every`` step
with the same collective that reads the divergence flag.
"""

from __future__ import annotations

import math

import torch

from dualadam.training.distributed import all_reduce_min
from dualadam.training.preemption import PreemptionFlag
from dualadam.training.runtime import Runtime

NO_BAD_STEP = 2**62  # "no non-finite loss yet": larger than any step count


class Diverged(Exception):
    """Training diverged at optimizer step ``step`` (1-based); nothing after it was saved. ``what``: what was
    found not finite (the training loss, a parameter, an evaluation loss)."""

    def __init__(self, step: int, what: str = "training loss"):
        super().__init__(f"non-finite {what} at optimizer step {step}; the run stopped and the last good "
                         "checkpoint was kept")
        self.step = step
        self.what = what


def non_finite_losses(row: dict[str, float]) -> list[str]:
    """The loss keys of a metrics row (``train/loss``, ``test/loss``, ...) whose value is NaN or infinite."""
    return [key for key, value in row.items()
            if key.endswith("loss") and not key.startswith("gap/") and not math.isfinite(value)]


def parameters_finite(model: torch.nn.Module, runtime: Runtime) -> bool:
    """Whether every parameter of ``model`` is finite on every rank: one host sync (and one collective)."""
    flags = [torch.isfinite(p.detach()).all() for p in model.parameters()]
    finite = torch.stack(flags).all() if flags else torch.tensor(True)
    return bool(all_reduce_min(finite.to(runtime.device, torch.int64), runtime).item())


class EvaluationStopped(Exception):
    """A preemption signal arrived during an evaluation, which stopped before its next batch."""


class StopOnPreemption:
    """``loader``, iterated until a preemption signal arrives: then ``EvaluationStopped`` instead of the next
    batch, so an evaluation longer than the scheduler's grace period (an LLM's takes minutes) never delays the
    checkpoint."""

    def __init__(self, loader, preemption: PreemptionFlag):
        self.loader, self.preemption = loader, preemption

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while not self.preemption.is_set:
            try:
                batch = next(batches)
            except StopIteration:
                return
            yield batch
        raise EvaluationStopped


class TrainingGuard:
    """``record`` after every optimizer step; ``poll`` says whether to stop (``"diverged"``/``"preempted"``)."""

    def __init__(self, runtime: Runtime, *, check_every: int, preemption: PreemptionFlag | None = None):
        self.runtime = runtime
        self.check_every = check_every
        self.preemption = preemption
        self.first_bad_step = torch.full((), NO_BAD_STEP, dtype=torch.int64, device=runtime.device)
        self.diverged_at: int | None = None
        self.preempted = False

    def record(self, loss: torch.Tensor, step: int) -> None:
        """``step``: the 1-based number of the optimizer step ``loss`` was computed for. Device ops only."""
        candidate = torch.where(torch.isfinite(loss.detach()), NO_BAD_STEP, step)
        torch.minimum(self.first_bad_step, candidate, out=self.first_bad_step)

    @property
    def signal(self) -> int | None:
        """The preemption signal this process received (None if only another rank was signalled)."""
        return None if self.preemption is None else self.preemption.received

    def _preemption_requested(self) -> bool:
        return self.preemption is not None and self.preemption.is_set

    def watch_evaluation(self, loader):
        """``loader`` made to stop at a preemption signal (``StopOnPreemption``). With several processes the
        ranks must stop together, so they keep evaluating and agree at the next ``poll``."""
        if self.preemption is None or self.runtime.world_size > 1:
            return loader
        return StopOnPreemption(loader, self.preemption)

    def check_model(self, model: torch.nn.Module, step: int) -> None:
        """Raise ``Diverged`` if a parameter of ``model`` is not finite (after optimizer step ``step``)."""
        if not parameters_finite(model, self.runtime):
            self.diverged_at = step
            raise Diverged(step, "parameter")

    def check_evaluation(self, row: dict[str, float], model: torch.nn.Module, step: int) -> None:
        """Before an epoch's row counts and its checkpoint is written: finite losses and parameters. Every rank
        evaluated the same weights on the same sets, so every rank decides alike."""
        bad = non_finite_losses(row)
        if bad:
            self.diverged_at = step
            raise Diverged(step, " and ".join(f"{key} ({row[key]})" for key in bad))
        self.check_model(model, step)

    def poll(self, step: int, *, force: bool = False) -> str | None:
        """After step ``step``: ``"diverged"``, ``"preempted"`` or None. Syncs with the device (and the other
        ranks) only every ``check_every`` steps or when ``force`` is set (at the end of an epoch)."""
        due = force or step % self.check_every == 0
        if self.runtime.world_size == 1 and self._preemption_requested():
            due = True  # a host flag, no collective needed; the sync below keeps a diverged state unsaved
        if not due:
            return None
        # One small collective carries both: the earliest bad step, and "some rank was signalled" as -1.
        flags = torch.stack([self.first_bad_step, torch.tensor(-int(self._preemption_requested()),
                                                               device=self.first_bad_step.device)])
        first_bad, preempt = all_reduce_min(flags, self.runtime).tolist()
        if first_bad != NO_BAD_STEP:
            self.diverged_at = first_bad
            return "diverged"
        self.preempted = preempt < 0
        return "preempted" if self.preempted else None
