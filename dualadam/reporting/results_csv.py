"""``results/<study>/runs.csv`` (one row per run) and ``epochs.csv`` (one row per run and epoch).

The files are merged, not overwritten: a run found again replaces its own rows (matched by the ``run``
column), and rows of runs no longer on this machine are kept, so committed results survive a fresh clone.
Delete a study's folder to rebuild it from scratch. Rows are sorted and floats written as Python's shortest
round-trip repr, so the same runs always give the same bytes.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from dualadam.atomic_files import strict_json
from dualadam.reporting.run_records import RunRecord
from dualadam.training.metrics import EPOCH, EPOCH_METRIC_KEYS

RUNS_FILE, EPOCHS_FILE = "runs.csv", "epochs.csv"

RUN_ID_COLUMNS = ("study", "optimizer", "lr", "seed", "status", "epochs_completed", "epochs", "monitor")
RUN_TAIL_COLUMNS = ("config_hash", "commit", "dirty", "source", "run", "wandb_run_id", "setting")
# No lr here: in epochs.csv ``lr`` is the metric (the lr of the epoch's last step); runs.csv has the
# configured lr, joined on ``run``.
EPOCH_ID_COLUMNS = ("study", "optimizer", "seed", "run", EPOCH)

# The optimizers' order in every table: the baselines, the matched-warmup control, InvAdam, then DualAdam.
OPTIMIZER_ORDER = ("sgd", "adam", "adamw", "radam", "nadam", "adam_matched_warmup", "invadam", "dualadam")

INT_COLUMNS = {"seed", "epochs_completed", "epochs", EPOCH}
TEXT_COLUMNS = {"study", "optimizer", "status", "monitor", "config_hash", "commit", "source", "run",
                "wandb_run_id", "setting"}


def format_value(value) -> str:
    """One CSV cell: empty for missing, ``true``/``false``, ints as ints, floats by their shortest repr."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def parse_value(column: str, text: str):
    """The inverse of ``format_value`` for a column of ``runs.csv``/``epochs.csv``."""
    if text == "":
        return None
    if column in TEXT_COLUMNS:
        return text
    if text in ("true", "false"):
        return text == "true"
    if column in INT_COLUMNS:
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def metric_columns(prefix: str, keys: set[str]) -> list[str]:
    """``prefix + key`` for each key: the metrics contract's order first, then any others sorted."""
    ordered = [k for k in EPOCH_METRIC_KEYS if k in keys] + sorted(keys - set(EPOCH_METRIC_KEYS))
    return [f"{prefix}{k}" for k in ordered]


def run_row(record: RunRecord) -> dict[str, str]:
    row = {
        "study": record.study, "optimizer": record.optimizer, "lr": record.lr, "seed": record.seed,
        "status": record.status, "epochs_completed": record.epochs_completed, "epochs": record.epochs,
        "monitor": record.monitor, "config_hash": record.config_hash, "commit": record.commit,
        "dirty": record.dirty, "source": record.source, "run": record.run, "wandb_run_id": record.wandb_run_id,
        "setting": strict_json(record.setting, sort_keys=True, separators=(",", ":")),
    }
    row.update({f"final/{k}": v for k, v in record.final.items() if k != EPOCH})
    row.update({f"best/{k}": v for k, v in record.best.items()})
    row.update({f"initial/{k}": v for k, v in record.initial.items()})
    return {k: format_value(v) for k, v in row.items()}


def epoch_rows(record: RunRecord) -> list[dict[str, str]]:
    ids = {"study": record.study, "optimizer": record.optimizer, "seed": record.seed, "run": record.run}
    return [{k: format_value(v) for k, v in {**ids, **row}.items()} for row in record.epoch_rows]


def optimizer_rank(name: str) -> tuple[int, str]:
    return (OPTIMIZER_ORDER.index(name), "") if name in OPTIMIZER_ORDER else (len(OPTIMIZER_ORDER), name)


def _number(text: str) -> float:
    """A cell as a sort key: its number, or +inf (last) when empty or not a number."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.inf


def run_order(row: dict[str, str]) -> tuple:
    return optimizer_rank(row["optimizer"]), _number(row["lr"]), _number(row["seed"]), row["run"]


def epoch_order(row: dict[str, str]) -> tuple:
    return optimizer_rank(row["optimizer"]), row["run"], _number(row[EPOCH])


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict[str, str]], order, id_columns: tuple[str, ...],
              tail_columns: tuple[str, ...] = ()) -> None:
    """``rows`` sorted by ``order``, the id columns first, then metrics, then ``tail_columns``."""
    keys = {k for row in rows for k in row} - set(id_columns) - set(tail_columns)
    final = {k.removeprefix("final/") for k in keys if k.startswith("final/")}
    best = {k.removeprefix("best/") for k in keys if k.startswith("best/")}
    initial = {k.removeprefix("initial/") for k in keys if k.startswith("initial/")}
    other = {k for k in keys if not k.startswith(("final/", "best/", "initial/"))}
    columns = [*id_columns, *metric_columns("final/", final), *metric_columns("best/", best),
               *metric_columns("initial/", initial), *metric_columns("", other), *tail_columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(sorted(rows, key=order))


def merge_study(study_dir: Path, records: list[RunRecord]) -> None:
    """Merge ``records`` (all of one study) into the study's ``runs.csv`` and ``epochs.csv``."""
    found = {record.run for record in records}
    kept_runs = [row for row in read_csv(study_dir / RUNS_FILE) if row["run"] not in found]
    kept_epochs = [row for row in read_csv(study_dir / EPOCHS_FILE) if row["run"] not in found]
    write_csv(study_dir / RUNS_FILE, kept_runs + [run_row(r) for r in records], run_order, RUN_ID_COLUMNS,
              RUN_TAIL_COLUMNS)
    write_csv(study_dir / EPOCHS_FILE, kept_epochs + [row for r in records for row in epoch_rows(r)], epoch_order,
              EPOCH_ID_COLUMNS)


def read_rows(path: Path) -> list[dict]:
    """A results CSV with typed values (numbers, bools, None for empty cells)."""
    return [{k: parse_value(k, v) for k, v in row.items()} for row in read_csv(path)]
