"""Which protocol a study's numbers come from, in one line, so no table is read without it.

A study run by ``python -m dualadam.compare`` has its ``protocol.json`` next to its tables: it was tuned (K
trials per optimizer on a validation split, the selections confirmed at N fresh seeds). Any other study ran its
configured hyperparameters as they are, the paper's protocol: read from ``runs.csv``, the lr each optimizer
ran, whether a validation split existed, and so where a "best" epoch or setting was chosen.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from dualadam.reporting.aggregate import StudyTable
from dualadam.reporting.render import format_setting_value, optimizer_name
from dualadam.reporting.run_records import is_finite_number
from dualadam.training.metrics import VAL_ACC, VAL_LOSS

PROTOCOL_FILE = "protocol.json"   # written by dualadam.compare.protocol, next to the study's tables


@dataclass(frozen=True)
class StudyProtocol:
    short: str        # e.g. "tuned: 6 trials/optimizer on a validation split (val/acc), 5 confirming seeds"
    text: str         # the Markdown paragraph under a table


def _lr_text(table: StudyTable) -> str:
    """"one lr for all (0.01)", or the shared lr and the exceptions, from the lrs the runs ran."""
    by_lr: dict[float, list[str]] = defaultdict(list)
    for row in table.rows:
        if is_finite_number(row.get("lr")) and row["optimizer"] not in by_lr[row["lr"]]:
            by_lr[row["lr"]].append(row["optimizer"])
    if not by_lr:
        return "the configured lr (not recorded)"
    shared = max(by_lr, key=lambda lr: (len(by_lr[lr]), -lr))
    others = "; ".join(f"{', '.join(optimizer_name(o) for o in names)} {format_setting_value(lr)}"
                       for lr, names in sorted(by_lr.items()) if lr != shared)
    if "optimizer.lr" in table.grouping_keys:
        return "an lr grid, each optimizer at its best lr (chosen on the test set)"
    return f"one lr for all ({format_setting_value(shared)}" + (f"; {others})" if others else ")")


def _has_validation(table: StudyTable) -> bool:
    return any(is_finite_number(r.get(f"final/{m}")) for r in table.rows for m in (VAL_ACC, VAL_LOSS))


def untuned_protocol(table: StudyTable) -> StudyProtocol:
    lr = _lr_text(table)
    if _has_validation(table):
        short = f"untuned: {lr}, with a validation split (selection on validation)"
        detail = "no tuning; the runs hold out a validation split, on which a best epoch is chosen"
    else:
        short = f"paper protocol: {lr}, no validation split, selection on test"
        detail = ("no tuning and no validation split, as the authors ran it: a \"best\" epoch or setting is "
                  "chosen on the test set, and every optimizer shares the configured hyperparameters, so an "
                  "optimizer that suits them (or, like DualAdam's blend, brings its own warmup) is favoured")
    return StudyProtocol(short, f"**Protocol: {short}.** Each optimizer ran its configured hyperparameters "
                                f"({lr}); {detail}.")


def tuned_protocol(record: dict) -> StudyProtocol:
    budget, score = record.get("budget", {}), record.get("score", {})
    trials, n = budget.get("trials_per_optimizer", "?"), budget.get("n", len(budget.get("confirm_seeds", [])))
    metric, sampler = score.get("metric", "?"), record.get("sampler", {}).get("sampler", "?")
    seeds = ", ".join(str(s) for s in budget.get("confirm_seeds", []))
    short = f"tuned: {trials} trials/optimizer on a validation split ({metric}), {n} confirming seeds"
    text = (f"**Protocol: {short}.** Each optimizer was tuned with the same budget: {trials} {sampler} trials "
            f"at seed {budget.get('tune_seed', '?')}, scored by the final-epoch `{metric}` on data held out of "
            f"training; its best trial was rerun at {n} fresh seeds ({seeds}), the runs in this table. The test "
            f"set is read only for what was selected. Trials, search spaces and selections: the study's "
            f"`{PROTOCOL_FILE}`, next to its tables.")
    return StudyProtocol(short, text)


def study_protocol(folder: Path, table: StudyTable) -> StudyProtocol:
    """The study's protocol: tuned where its folder holds a compare ``protocol.json``, else untuned."""
    path = folder / PROTOCOL_FILE
    if path.is_file():
        return tuned_protocol(json.loads(path.read_text()))
    return untuned_protocol(table)
