"""Preemption: SLURM sends SIGTERM (or the signal set with ``--signal``, often SIGUSR1) before it kills or
requeues a job, and submitit sends its own signal (SIGUSR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise)
shortly before a timeout. The handler only raises a flag; the trainer checks it between steps, saves a
checkpoint at that step, and stops cleanly (status ``preempted``), so the rerun resumes where this one stopped.

Once the run's files are written, ``redeliver`` sends the signal again to the handlers that were installed
before training (the entrypoint calls it; tests calling ``train`` do not): under submitit, its handler then
requeues the job (``scontrol requeue``) and exits, which is how submitit's requeue and our mid-epoch checkpoint
cooperate; without a handler, the default action ends the process as the signal intended (a multirun of the
basic launcher stops, and relaunching it resumes).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def submitit_signal() -> signal.Signals | None:
    """The signal submitit uses for timeouts and preemption in this job, or None outside a submitit job."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


def preemption_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM, SIGUSR1 and, inside a submitit job, submitit's own signal."""
    extra = submitit_signal()
    return PREEMPTION_SIGNALS + ((extra,) if extra is not None and extra not in PREEMPTION_SIGNALS else ())


class Preempted(Exception):
    """Raised by the trainer after it saved a checkpoint because a preemption signal arrived."""

    def __init__(self, signum: int | None, step: int):
        got = f"received {signal.Signals(signum).name}" if signum else "another process was signalled"
        super().__init__(f"{got}; checkpoint saved at optimizer step {step}")
        self.signum = signum  # None: this rank got no signal itself, but stops with the ranks that did
        self.step = step


class PreemptionFlag:
    """Installs handlers for ``signals`` while active (main thread only) and restores the old ones."""

    def __init__(self, signals=None):
        self.signals = tuple(preemption_signals() if signals is None else signals)
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
        if self.received is None:
            log.warning("Received %s: saving a checkpoint at the next step, then stopping",
                        signal.Signals(signum).name)
        self.received = self.received or signum

    @property
    def is_set(self) -> bool:
        return self.received is not None


def redeliver(signum: int) -> None:
    """Send ``signum`` to this process again, now that the run has saved its state and its handlers are gone:
    submitit's handler requeues the job; the default action terminates the process."""
    log.info("Run state saved; passing %s on to the process's own handler", signal.Signals(signum).name)
    signal.raise_signal(signum)
