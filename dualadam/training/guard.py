"""When training must stop early: a non-finite loss (divergence) or a preemption signal.

Divergence is watched on the device: after every step, ``record`` folds the step's loss into ``first_bad_step``,
a 0-d int64 tensor holding the first optimizer step (1-based) whose loss was NaN or infinite, without a host
sync. The host reads it every ``check_every`` steps and at the end of every epoch (``poll``), so a diverged run
stops at most ``check_every - 1`` steps late, and reports the exact step anyway. Checkpoints are only written
after a ``poll`` found no divergence, so a diverged state never overwrites the last good checkpoint.

A preemption signal only raises a host flag (``PreemptionFlag``). With one process it is read after every step
(no device sync); with several, ranks must stop at the same step, so they agree at each ``check_every`` step
with the same collective that reads the divergence flag.
"""

from __future__ import annotations

import torch

from dualadam.training.distributed import all_reduce_min
from dualadam.training.preemption import PreemptionFlag
from dualadam.training.runtime import Runtime

NO_BAD_STEP = 2**62  # "no non-finite loss yet": larger than any step count


class Diverged(Exception):
    """The loss of optimizer step ``step`` (1-based) was not finite; nothing after it was saved."""

    def __init__(self, step: int):
        super().__init__(f"non-finite training loss at optimizer step {step}; the run stopped and the last "
                         "good checkpoint was kept")
        self.step = step


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
