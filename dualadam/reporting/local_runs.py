"""Runs from run directories: ``config.json`` (what was trained, written once by the run's first attempt),
``summary.json`` (how it ended, and each attempt's code), ``metrics.jsonl`` (the curves). A folder is a run
directory when it holds ``summary.json`` or ``metrics.jsonl``.

Hydra's ``.hydra/config.yaml`` is read only for runs made before ``config.json`` existed: Hydra rewrites it
at every launch, a refused or skipped one included, so it can describe a launch that never trained there."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dualadam.reporting.run_records import (
    INCOMPLETE,
    NON_SETTING_KEYS,
    RunRecord,
    optimizer_label,
    outcome,
    setting_of,
    sorted_epoch_rows,
)
from dualadam.training.outputs import METRICS_FILE, SUMMARY_FILE, read_metrics_lines, read_run_config

log = logging.getLogger(__name__)

SKIPPED_FOLDERS = {".hydra", "wandb", "checkpoints", "__pycache__"}


def find_run_dirs(root: Path) -> list[Path]:
    """Every run directory below ``root`` (``root`` itself included), sorted."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in SKIPPED_FOLDERS)
        if SUMMARY_FILE in files or METRICS_FILE in files:
            found.append(Path(folder))
    return sorted(found)


def _resolved_config(config_path: Path) -> dict:
    """The saved config, resolved. Keys that only say where files go are dropped first: ``run_dir`` is a
    ``${hydra:...}`` interpolation that only resolves inside a Hydra job."""
    cfg = OmegaConf.load(config_path)
    for key in ("run_dir", "hydra"):
        if key in cfg:
            del cfg[key]   # not pop(): that would resolve the value first
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:  # an interpolation that cannot resolve here: keep its text
        log.warning("%s: could not resolve every value (%s); unresolved ones are kept as written",
                    config_path, error)
        return OmegaConf.to_container(cfg, resolve=False)


def _hydra_choices(run_dir: Path) -> dict:
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    choices = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.choices")
    return dict(OmegaConf.to_container(choices)) if choices is not None else {}


def study_of(config: dict, choices: dict) -> str | None:
    """The run's study: ``logger.group``, else the ``experiment=`` it was launched with."""
    group = (config.get("logger") or {}).get("group")
    return str(group) if group else choices.get("experiment")


def run_config(run_dir: Path) -> tuple[dict, dict] | None:
    """The run's resolved config and Hydra choices: ``config.json``, else (older runs) ``.hydra/``."""
    recorded = read_run_config(run_dir)
    if recorded is not None and isinstance(recorded.get("config"), dict):
        return recorded["config"], recorded.get("choices") or {}
    config_path = run_dir / ".hydra" / "config.yaml"
    if config_path.is_file():
        return _resolved_config(config_path), _hydra_choices(run_dir)
    return None


def read_summary_file(run_dir: Path) -> dict:
    """``summary.json``, or ``{}`` (with a warning) when there is none or it is damaged."""
    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        log.warning("%s is damaged (%s); the run counts as incomplete until it is resumed", path, error)
        return {}
    return summary if isinstance(summary, dict) else {}


def code_provenance(summary: dict) -> tuple[str | None, bool | None]:
    """Every commit the run's attempts ran (in order, space-separated) and whether any ran uncommitted code."""
    attempts = summary.get("attempts") or ([summary["git"]] if summary.get("git") else [])
    commits = list(dict.fromkeys(a.get("commit") for a in attempts if a.get("commit")))
    dirty = [a.get("dirty") for a in attempts if a.get("dirty") is not None]
    return (" ".join(commits) or None), (any(dirty) if dirty else None)


def read_local_run(run_dir: Path, run_key: str) -> RunRecord | None:
    """The record of the run in ``run_dir`` (``run_key`` names it in the CSVs), or None, with a warning, when
    it has no saved config or no study to belong to."""
    found = run_config(run_dir)
    if found is None:
        log.warning("%s: no config.json (or .hydra/config.yaml), so its settings are unknown; skipped (runs "
                    "started through `python -m dualadam.train` save it)", run_dir)
        return None
    config, choices = found
    study = study_of(config, choices)
    if not study:
        log.warning("%s: belongs to no study (no logger.group, no experiment=); skipped. Launch it with "
                    "experiment=<study> or logger.group=<study>", run_dir)
        return None
    summary = read_summary_file(run_dir)
    rows, damaged = read_metrics_lines(run_dir)
    if damaged:
        log.warning("%s: %d damaged lines in %s skipped (resuming the run repairs them)", run_dir, damaged,
                    METRICS_FILE)
    epoch_rows = sorted_epoch_rows(rows)
    final = summary.get("final") or (epoch_rows[-1] if epoch_rows else {})
    commit, dirty = code_provenance(summary)
    return RunRecord(
        study=study, optimizer=optimizer_label(config, choices.get("optimizer")),
        lr=(config.get("optimizer") or {}).get("lr"), seed=config.get("seed"),
        status=outcome(summary.get("status"), final) if summary else INCOMPLETE,
        run=run_key, source="local",
        epochs_completed=summary.get("epochs_completed", len(epoch_rows)),
        epochs=(config.get("trainer") or {}).get("epochs"), monitor=summary.get("monitor"),
        final=final, best=summary.get("best") or {}, initial=summary.get("initial") or {},
        config_hash=summary.get("config_hash"), commit=commit, dirty=dirty,
        wandb_run_id=(summary.get("wandb") or {}).get("run_id"),
        setting=setting_of(config), epoch_rows=epoch_rows,
    )


def collect_local_runs(roots: list[Path]) -> tuple[list[RunRecord], list[str]]:
    """Every run below ``roots``; also the notes to print (roots that do not exist, runs skipped)."""
    records, notes = [], []
    for root in roots:
        if not root.is_dir():
            notes.append(f"{root}: not found, skipped")
            continue
        run_dirs = find_run_dirs(root)
        skipped = 0
        for run_dir in run_dirs:
            # The key keeps the root's own name, so runs found under `outputs` and `multirun` never collide.
            key = Path(root.resolve().name, run_dir.resolve().relative_to(root.resolve())).as_posix()
            record = read_local_run(run_dir, key)
            if record is None:
                skipped += 1
            else:
                records.append(record)
        notes.append(f"{root}: {len(run_dirs)} run directories, {len(run_dirs) - skipped} read"
                     + (f", {skipped} skipped (see the warnings)" if skipped else ""))
    return records, notes


__all__ = ["NON_SETTING_KEYS", "code_provenance", "collect_local_runs", "find_run_dirs", "read_local_run",
           "run_config", "study_of"]
