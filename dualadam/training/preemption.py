"""Preemption: SLURM sends SIGTERM (or the signal set with ``--signal``, often SIGUSR1) before it kills or
requeues a job. The handler only raises a flag; the trainer checks it between steps, saves a checkpoint at that
step, and exits cleanly, so submitit can requeue the job and the rerun resumes where this one stopped.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised by the trainer after it saved a checkpoint because a preemption signal arrived."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"received {signal.Signals(signum).name}; checkpoint saved at optimizer step {step}")
        self.signum = signum
        self.step = step


class PreemptionFlag:
    """Installs handlers for ``PREEMPTION_SIGNALS`` while active (main thread only) and restores the old ones."""

    def __init__(self, signals=PREEMPTION_SIGNALS):
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():  # signal.signal only works there
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    @property
    def is_set(self) -> bool:
        return self.received is not None
