"""Runs from the W&B API, for studies whose run directories live elsewhere (a cluster's scratch disk).

Only when asked: ``make tables TABLES_ARGS=--wandb`` (``scripts/make_tables.py --wandb``). Without credentials
or network it returns no runs and a note saying W&B was skipped and why; it never fails the tables.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf

from dualadam.reporting.run_records import (
    COMPLETED,
    FAILED,
    INCOMPLETE,
    INTERRUPTED,
    RunRecord,
    optimizer_label,
    outcome,
    setting_of,
    sorted_epoch_rows,
)
from dualadam.training.metrics import EPOCH
from dualadam.training.outputs import config_hash
from dualadam.training.wandb_logger import wandb_credentials_exist

NOT_METRICS = ("diverged_at_step",)   # numbers the trainer puts in the W&B summary that are not metrics

# W&B's run states -> ours. A run W&B marks "finished" ended without an exception.
WANDB_STATES = {"finished": COMPLETED, "failed": FAILED, "crashed": FAILED, "killed": INTERRUPTED,
                "running": INCOMPLETE, "pending": INCOMPLETE, "preempted": INTERRUPTED, "preempting": INCOMPLETE}


def record_from_wandb_run(run, project_path: str) -> RunRecord | None:
    """A ``wandb.apis.public.Run`` of a study as a ``RunRecord``; None when it belongs to no study."""
    config = dict(run.config)
    study = run.group or (config.get("logger") or {}).get("group")
    if not study:
        return None
    summary = dict(run.summary_metrics)
    epoch_rows = sorted_epoch_rows([{k: v for k, v in row.items() if not k.startswith("_")}
                                    for row in run.scan_history() if row.get(EPOCH) is not None])
    # Numbers only (NaN included: a diverged run's loss); the summary also holds strings and W&B's own dicts.
    metrics = {k: v for k, v in summary.items() if v is None or (isinstance(v, int | float) and not isinstance(v, bool))}
    final = {k: v for k, v in metrics.items()
             if not k.startswith(("_", "best/", "initial/")) and k not in NOT_METRICS}
    best = {k.removeprefix("best/"): v for k, v in metrics.items() if k.startswith("best/")}
    initial = {k.removeprefix("initial/"): v for k, v in metrics.items() if k.startswith("initial/")}
    # The trainer writes its own status into the W&B summary; W&B's run state is the fallback.
    reported = summary.get("status") or WANDB_STATES.get(run.state, INCOMPLETE)
    return RunRecord(
        study=str(study), optimizer=optimizer_label(config), lr=(config.get("optimizer") or {}).get("lr"),
        seed=config.get("seed"), status=outcome(reported, final),
        run=f"wandb:{project_path}/{run.id}", source="wandb", epochs_completed=len(epoch_rows),
        epochs=(config.get("trainer") or {}).get("epochs"), monitor=(config.get("trainer") or {}).get("monitor"),
        final=final, best=best, initial=initial,
        # Recomputed from the logged (resolved) config; equal to summary.json's for the same config.
        config_hash=config_hash(OmegaConf.create(config)), commit=getattr(run, "commit", None),
        wandb_run_id=run.id, setting=setting_of(config), epoch_rows=epoch_rows,
    )


def fetch_wandb_runs(project: str, entity: str | None = None, studies: list[str] | None = None,
                     timeout: int = 30) -> tuple[list[RunRecord], str]:
    """The runs of ``entity/project`` that belong to a study (optionally only ``studies``), and a note for the
    log. Skips, saying why, when offline or without credentials."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return [], f"W&B skipped: WANDB_MODE={os.environ['WANDB_MODE']}"
    if not wandb_credentials_exist():
        return [], "W&B skipped: no credentials (set WANDB_API_KEY or run `wandb login`); local runs only"
    path = f"{entity}/{project}" if entity else project
    try:
        import wandb

        api = wandb.Api(timeout=timeout)
        filters = {"group": {"$in": studies}} if studies else {"group": {"$ne": None}}
        records = [r for r in (record_from_wandb_run(run, path) for run in api.runs(path, filters=filters)) if r is not None]
    except Exception as error:  # offline, unknown project, server error: the local tables still get made
        return [], f"W&B skipped: could not read {path} ({type(error).__name__}: {error}); local runs only"
    return records, f"W&B: {len(records)} runs read from {path}"
