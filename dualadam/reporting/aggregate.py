"""A study's runs grouped by optimizer (and by whatever else the study varies), with mean and sample std
over seeds.

Grouping: besides the optimizer, a config key groups the runs when it takes two or more values among runs of
the same optimizer (the lr in a learning-rate grid, ``switch_rate`` in a blend-length study). Keys that differ
only between optimizers (their weight decay, their betas) do not, and neither does the seed: seeds are what a
group averages over. A key missing from some runs (added to the config later) is compared only where present.

Averaged: ``completed`` runs, once per experiment: one run per (optimizer, setting, seed), where the setting
leaves out what cannot change a result (``run_records.comparable_setting``). Another completed run of the
same experiment (a seed rerun, a copied folder, the same run under an older ``config_hash``) is listed as a
duplicate, never averaged twice. Everything else is listed with its status and counted, never silently
dropped.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from dualadam.atomic_files import strict_json
from dualadam.reporting.results_csv import optimizer_rank
from dualadam.reporting.run_records import COMPLETED, comparable_setting, is_finite_number
from dualadam.training.metrics import GAP_ACC, TEST_ACC, TRAIN_EVAL_ACC


@dataclass(frozen=True)
class Column:
    """A table column: the ``runs.csv`` column it averages, its header, and how its numbers are written."""

    source: str
    header: str
    number_format: str        # format spec for mean and std
    latex_header: str
    optional: bool = False    # shown only when some run has it (sharpness needs analysis.sharpness=true,
                              # the before-training column trainer.eval_before_training=true)


TABLE_COLUMNS = (
    # A pretrained model's accuracy before fine-tuning (trainer.eval_before_training): what training added.
    Column(f"initial/{TEST_ACC}", "test acc before training (%)", ".2f", r"Test acc.\ before (\%)", True),
    Column(f"final/{TEST_ACC}", "final test acc (%)", ".2f", r"Final test acc.\ (\%)"),
    Column(f"best/{TEST_ACC}", "best test acc (%)", ".2f", r"Best test acc.\ (\%)"),
    Column(f"final/{TRAIN_EVAL_ACC}", "final train-eval acc (%)", ".2f", r"Final train-eval acc.\ (\%)"),
    Column(f"final/{GAP_ACC}", "final gap (pp)", ".2f", r"Final gap (pp)"),
    Column("final/sharpness/hessian_top_eig", "top Hessian eigenvalue", ".3g", r"Top Hessian eig.", True),
    Column("final/sharpness/hessian_trace", "Hessian trace", ".3g", r"Hessian trace", True),
)
SELECTION_COLUMN = f"final/{TEST_ACC}"   # what "best setting per optimizer" maximizes


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None   # sample std (n - 1); None for a single value
    n: int


def mean_and_std(values: list[float]) -> Stat:
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


@dataclass
class Group:
    optimizer: str
    values: tuple                                    # the study's grouping keys' values, in key order
    averaged: list[dict] = field(default_factory=list)
    excluded: list[tuple[dict, str]] = field(default_factory=list)   # (run row, why it is not averaged)
    stats: dict[str, Stat] = field(default_factory=dict)


@dataclass
class StudyTable:
    study: str
    grouping_keys: list[str]
    columns: list[Column]
    groups: list[Group]
    rows: list[dict]

    @property
    def excluded(self) -> list[tuple[dict, str]]:
        return [item for group in self.groups for item in group.excluded]

    def best_per_optimizer(self) -> list[Group]:
        """Each optimizer's group with the highest mean final test accuracy (the first on ties)."""
        best: dict[str, Group] = {}
        for group in self.groups:
            stat = group.stats.get(SELECTION_COLUMN)
            current = best.get(group.optimizer)
            if stat and (current is None or stat.mean > current.stats[SELECTION_COLUMN].mean):
                best[group.optimizer] = group
        return [g for g in self.groups if best.get(g.optimizer) is g]

    def headline_groups(self) -> list[Group]:
        """What the plots show: every group, or each optimizer's best setting when the study varies more."""
        return self.best_per_optimizer() if self.grouping_keys else [g for g in self.groups if g.stats]


def _setting(row: dict) -> dict:
    return comparable_setting(json.loads(row["setting"])) if row.get("setting") else {}


def experiment_key(row: dict) -> tuple:
    """What makes two runs the same experiment: optimizer, setting and seed."""
    return row["optimizer"], strict_json(_setting(row), sort_keys=True), row.get("seed")


def grouping_keys(rows: list[dict]) -> list[str]:
    """Config keys with two or more values among runs of one optimizer, sorted (``optimizer.lr`` first)."""
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        for key, value in _setting(row).items():
            seen[(row["optimizer"], key)].add(strict_json(value))
    varying = {key for (_, key), values in seen.items() if len(values) > 1}
    return sorted(varying, key=lambda k: (k != "optimizer.lr", k))


def duplicates(rows: list[dict]) -> dict[str, str]:
    """``{run: kept run}`` for completed runs of an experiment already seen (``experiment_key``; the last
    ``run`` name is kept)."""
    completed = sorted((r for r in rows if r["status"] == COMPLETED), key=lambda r: r["run"])
    latest = {experiment_key(row): row["run"] for row in completed}
    return {r["run"]: latest[experiment_key(r)] for r in completed if latest[experiment_key(r)] != r["run"]}


def _value_order(value) -> tuple:
    return (0, value, "") if isinstance(value, int | float) and not isinstance(value, bool) else (1, 0, str(value))


def build_study_table(study: str, rows: list[dict]) -> StudyTable:
    """Group ``rows`` (typed ``runs.csv`` rows of one study) and average each group's completed runs."""
    keys = grouping_keys(rows)
    dupes = duplicates(rows)
    groups: dict[tuple, Group] = {}
    for row in rows:
        setting = _setting(row)
        values = tuple(setting.get(k) for k in keys)
        group = groups.setdefault((row["optimizer"], values), Group(row["optimizer"], values))
        if row["run"] in dupes:
            group.excluded.append((row, f"duplicate of {dupes[row['run']]}"))
        elif row["status"] != COMPLETED:
            group.excluded.append((row, row["status"]))
        else:
            group.averaged.append(row)
    present = {k for row in rows for k, v in row.items() if is_finite_number(v)}
    columns = [c for c in TABLE_COLUMNS if not c.optional or c.source in present]
    for group in groups.values():
        for column in columns:
            values = [r[column.source] for r in group.averaged if is_finite_number(r.get(column.source))]
            if values:
                group.stats[column.source] = mean_and_std(values)
    ordered = sorted(groups.values(), key=lambda g: (optimizer_rank(g.optimizer), [_value_order(v) for v in g.values]))
    return StudyTable(study, keys, columns, ordered, rows)
