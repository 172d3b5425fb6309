"""Progress of the flatness measurements, stage by stage, so a long analysis is visibly working.

The measuring functions take a *tick* (``progress()``, called once per unit of work: a Lanczos iteration, a
Hutchinson probe, a loss evaluation on a grid point) and the functions that run several stages take a
*stage* factory: ``with stage("Hessian trace (Hutchinson probes)", total) as tick: ...``. By default both do
nothing; :class:`StageBars` draws one tqdm bar per stage (count, rate and ETA) on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TextIO

Tick = Callable[[], None]
Stage = Callable[[str, int], AbstractContextManager[Tick]]


def _nothing() -> None:
    return None


def tick_of(progress: Tick | None) -> Tick:
    return progress if progress is not None else _nothing


@contextmanager
def no_stage(description: str, total: int) -> Iterator[Tick]:
    yield _nothing


class StageBars:
    """A stage factory that draws, for each stage, a tqdm bar named ``<prefix>: <stage>`` on ``stream``."""

    def __init__(self, prefix: str, stream: TextIO | None = None):
        self.prefix = prefix
        self.stream = stream

    @contextmanager
    def __call__(self, description: str, total: int) -> Iterator[Tick]:
        from tqdm import tqdm  # a suite dependency; the measuring functions themselves need torch alone

        bar = tqdm(total=total, desc=f"{self.prefix}: {description}", file=self.stream or sys.stderr,
                   unit="step", mininterval=1.0, dynamic_ncols=True, leave=True)
        try:
            yield lambda: bar.update(1)
        finally:
            bar.close()
