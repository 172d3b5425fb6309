"""Deterministic cost proxies for an optimizer step (op count, bytes allocated), from torch.profiler.

Wall-clock ratios live in ``scripts/bench_optim.py``; these counts do not depend on machine load, so tests
can assert on them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepCost:
    aten_ops: int  # top-level aten op calls (a foreach op over 62 tensors counts once)
    bytes_allocated: int  # bytes an op allocated and handed on (temporaries), summed over the step
    max_bytes_one_op: int
    op_names: tuple[str, ...] = ()  # the top-level aten ops, in call order


@contextmanager
def stderr_silenced():
    """The profiler's C++ side prints start/stop lines straight to fd 2; keep them out of reports."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def measure_step(step: Callable[[], object]) -> StepCost:
    """Profile one call of ``step`` (e.g. ``optimizer.step``) on the CPU."""
    with stderr_silenced(), torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        step()
    events = prof.events()
    top_level = [e for e in events if e.name.startswith("aten::") and not _has_aten_parent(e)]
    sizes = [e.self_cpu_memory_usage for e in events if e.self_cpu_memory_usage > 0]
    return StepCost(len(top_level), sum(sizes), max(sizes, default=0), tuple(e.name for e in top_level))


def _has_aten_parent(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False
