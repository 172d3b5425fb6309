"""Steps to reach a target: for each run, the first optimizer step at which its metric reached a target value,
from ``epochs.csv`` (each epoch's metrics with ``optim/steps``, the global step at the epoch's end).

The metric is the validation accuracy where the study has a validation split, else the test accuracy (a
paper-protocol study has no other held-out data; the report says so). The target is the lowest of the
the reference optimizer's (Adam's) median final value, so the question is how fast each optimizer gets to
where the reference ends (the lowest of the optimizers' median final values without a reference run), unless
a value is given. Runs are taken one per seed, by the rule of ``statistics.py``; a run that
never reaches the target is kept, as "never", not dropped.

Metrics are recorded once per epoch, so a step count is the end of the first epoch at or past the target: an
upper bound on the step at which the run got there, at the resolution of one epoch.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from dualadam.reporting.aggregate import Group
from dualadam.reporting.run_records import is_finite_number
from dualadam.reporting.statistics import one_value_per_seed
from dualadam.training.metrics import EPOCH, HIGHER_IS_BETTER, OPTIMIZER_STEPS, TEST_ACC, VAL_ACC


@dataclass(frozen=True)
class TargetSpec:
    """What the command line asked for: a metric (``None``: val/acc where recorded, else test/acc) and a
    value (``None``: the reference's median final value, see ``choose_target``)."""

    metric: str | None = None
    value: float | None = None


@dataclass(frozen=True)
class Target:
    metric: str
    value: float
    how: str                   # how the value was chosen, in words

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER

    def reached(self, value: float) -> bool:
        return value >= self.value if self.higher_is_better else value <= self.value

    @property
    def relation(self) -> str:
        return "≥" if self.higher_is_better else "≤"


@dataclass
class StepsToTarget:
    """One group's first step at the target, per seed (``None``: never reached in the run)."""

    group: Group
    steps: dict[int, int | None] = field(default_factory=dict)
    runs: dict[int, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.steps)

    @property
    def reached(self) -> int:
        return sum(s is not None for s in self.steps.values())

    @property
    def median(self) -> float:
        """The median step over all seeds, a run that never reached counted as infinitely slow: ``inf`` when
        the median run did not reach the target."""
        values = [math.inf if s is None else float(s) for s in self.steps.values()]
        return statistics.median(values) if values else math.nan


def runs_by_epoch(epoch_rows: list[dict]) -> dict[str, list[dict]]:
    by_run: dict[str, list[dict]] = {}
    for row in epoch_rows:
        by_run.setdefault(row["run"], []).append(row)
    return {run: sorted(rows, key=lambda r: r[EPOCH]) for run, rows in by_run.items()}


def default_metric(epoch_rows: list[dict]) -> str:
    """val/acc where any run recorded it (a validation split), else test/acc."""
    return VAL_ACC if any(is_finite_number(r.get(VAL_ACC)) for r in epoch_rows) else TEST_ACC


def choose_target(groups: list[Group], epoch_rows: list[dict], spec: TargetSpec | None = None,
                  reference: str | None = None) -> Target | None:
    """The target of ``spec``; by default the ``reference`` optimizer's median final value (how many steps
    each optimizer needs to reach what the reference reaches by the end), or, without a reference run, the
    lowest (for a loss: highest) of the optimizers' median final values. ``None`` when no run has the metric."""
    spec = spec or TargetSpec()
    metric = spec.metric or default_metric(epoch_rows)
    if spec.value is not None:
        return Target(metric, float(spec.value), "as set (--target)")
    medians = {g.optimizer: statistics.median(seeds.values.values()) for g, seeds in
               ((g, one_value_per_seed(g.averaged, f"final/{metric}")) for g in groups) if seeds.values}
    if not medians:
        return None
    if reference in medians:
        return Target(metric, medians[reference], f"the median final {metric} of the reference, {reference}")
    worst = min(medians.values()) if metric in HIGHER_IS_BETTER else max(medians.values())
    return Target(metric, worst, f"the {'lowest' if metric in HIGHER_IS_BETTER else 'highest'} of the "
                                 f"optimizers' median final {metric}")


def first_step_at_target(rows: list[dict], target: Target) -> int | None:
    """The ``optim/steps`` of the first epoch row (in epoch order) whose metric reached the target."""
    for row in rows:
        value = row.get(target.metric)
        if is_finite_number(value) and target.reached(value) and is_finite_number(row.get(OPTIMIZER_STEPS)):
            return int(row[OPTIMIZER_STEPS])
    return None


def steps_to_target(groups: list[Group], epoch_rows: list[dict], target: Target) -> list[StepsToTarget]:
    """Each group's steps to ``target``, one run per seed (the run ``statistics.one_value_per_seed`` keeps)."""
    by_run = runs_by_epoch(epoch_rows)
    found = []
    for group in groups:
        result = StepsToTarget(group)
        for seed, run in one_value_per_seed(group.averaged, f"final/{target.metric}").runs.items():
            if run in by_run:
                result.steps[seed] = first_step_at_target(by_run[run], target)
                result.runs[seed] = run
        found.append(result)
    return found


def evaluation_interval(epoch_rows: list[dict]) -> int | None:
    """Steps between two evaluations (one epoch), when every run evaluates at the same interval."""
    gaps = set()
    for rows in runs_by_epoch(epoch_rows).values():
        steps = [r[OPTIMIZER_STEPS] for r in rows if is_finite_number(r.get(OPTIMIZER_STEPS))]
        gaps |= {int(b - a) for a, b in zip(steps, steps[1:])}
    return gaps.pop() if len(gaps) == 1 else None


# ------------------------------------------------------------------------------------------------ the text


def format_steps(steps: float | int | None) -> str:
    if steps is None or steps == math.inf:
        return "never"
    return f"{steps:,.0f}"


def granularity_note(epoch_rows: list[dict]) -> str:
    interval = evaluation_interval(epoch_rows)
    every = f"every {interval:,} steps" if interval else "once per epoch"
    return (f"The runs are evaluated once per epoch ({every}), so a step count is the end of the first epoch at "
            "or past the target: per-epoch granularity, an upper bound on when the run got there.")


def target_description(target: Target) -> str:
    held_out = "" if target.metric != TEST_ACC else \
        " (test accuracy: this study has no validation split, so the target is read on the test set)"
    return f"`{target.metric}` {target.relation} {target.value:.4g}{held_out}, {target.how}"


def steps_to_target_section(found: list[StepsToTarget], target: Target, epoch_rows: list[dict],
                            label_of) -> str:
    """The steps-to-target table: per optimizer, how many seeds reached it, the median step (``never`` when
    the median run did not), and every seed's step."""
    lines = [f"**Steps to reach the target** {target_description(target)}: the first optimizer step at which "
             f"each run (one per seed) reached it; a run that never did is listed as `never`, not dropped. "
             + granularity_note(epoch_rows),
             "", "| optimizer | reached | median steps | steps per seed |", "| --- | ---: | ---: | --- |"]
    for item in found:
        per_seed = ", ".join(f"{seed}: {format_steps(step)}" for seed, step in sorted(item.steps.items()))
        lines.append(f"| {label_of(item.group)} | {item.reached}/{item.n} | {format_steps(item.median)} | "
                     f"{per_seed or '–'} |")
    return "\n".join(lines)
