"""One run as the tables see it, whichever source it came from (a run directory or the W&B API).

A run's ``status`` is what ``summary.json`` says (``completed``, ``failed``, ``interrupted``), ``incomplete``
when there is no summary yet (still running, or killed without a chance to write one), and ``diverged`` when
it completed with a non-finite final loss. Only ``completed`` runs are averaged; the others are listed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from dualadam.atomic_files import strict_json
from dualadam.training.metrics import EPOCH, TEST_LOSS, TRAIN_EVAL_LOSS, TRAIN_LOSS
from dualadam.training.optimizers import optimizer_label as label_of_optimizer_config
from dualadam.training.outputs import ADDED_KEY_DEFAULTS, IDENTITY_EXCLUDED_KEYS

COMPLETED, DIVERGED, FAILED, INTERRUPTED, INCOMPLETE = "completed", "diverged", "failed", "interrupted", "incomplete"

# Config keys that say nothing about what was trained: every key ``config_hash`` leaves out (where files go,
# how the run is watched, loader and evaluation batch settings), the seed (a column of its own), and how the
# final solution is measured afterwards (``analysis``: a run measured for sharpness trained the same way).
NON_SETTING_KEYS = (*IDENTITY_EXCLUDED_KEYS, "seed", "analysis")

# A diverged run ends with one of these losses non-finite (summary.json writes NaN and inf as null).
DIVERGENCE_LOSSES = (TRAIN_LOSS, TRAIN_EVAL_LOSS, TEST_LOSS)


@dataclass
class RunRecord:
    """A run's identity, outcome and curves. ``final``/``best`` are metric rows keyed by the names in
    ``dualadam/training/metrics.py`` (plus any final measurements such as ``sharpness/*``), ``initial`` the
    evaluation before training if the run made one; accuracies in percent. ``setting`` is the flattened config
    without ``NON_SETTING_KEYS``."""

    study: str
    optimizer: str          # the optimizer config chosen (``adam_matched_warmup``), not only its class name
    lr: float | None
    seed: int | None
    status: str
    run: str                # where it came from: ``outputs/studies/x/3`` or ``wandb:entity/project/id``
    source: str             # "local" or "wandb"
    epochs_completed: int | None = None
    epochs: int | None = None
    monitor: str | None = None
    final: dict[str, float | None] = field(default_factory=dict)
    best: dict[str, float | None] = field(default_factory=dict)
    initial: dict[str, float | None] = field(default_factory=dict)  # before training (trainer.eval_before_training)
    config_hash: str | None = None
    commit: str | None = None
    dirty: bool | None = None
    wandb_run_id: str | None = None
    setting: dict[str, object] = field(default_factory=dict)
    epoch_rows: list[dict[str, float | None]] = field(default_factory=list)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become their JSON text, so every value is comparable."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = strict_json(value) if isinstance(value, list | tuple) else value
    return flat


def setting_of(config: dict) -> dict[str, object]:
    """The flattened config without ``NON_SETTING_KEYS`` (or anything below them), keys sorted."""
    return comparable_setting(flatten(config))


def comparable_setting(flat: dict[str, object]) -> dict[str, object]:
    """A flattened setting as runs are compared: without ``NON_SETTING_KEYS`` and without keys added to the
    configs later while they hold their default (``ADDED_KEY_DEFAULTS``), keys sorted. Applied to settings
    read back from older CSVs too, so a run made before a key existed still matches one made after."""
    kept = {k: v for k, v in flat.items()
            if not any(k == x or k.startswith(f"{x}.") for x in NON_SETTING_KEYS)
            and not (k in ADDED_KEY_DEFAULTS and v == ADDED_KEY_DEFAULTS[k])}
    return dict(sorted(kept.items()))


def optimizer_label(config: dict, hydra_choice: str | None = None) -> str:
    """The optimizer config a run chose. Hydra records the choice; without it (W&B), the control
    ``adam_matched_warmup`` is recognised by the key only it has."""
    if hydra_choice:
        return str(hydra_choice)
    return label_of_optimizer_config(config.get("optimizer") or {})


def is_finite_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def outcome(reported_status: str | None, final: dict) -> str:
    """The run's status for the tables: the reported one, or ``diverged`` for a completed run whose final
    losses are not finite, or ``incomplete`` when nothing was reported."""
    if reported_status is None:
        return INCOMPLETE
    if reported_status == COMPLETED and not all(is_finite_number(final.get(k)) for k in DIVERGENCE_LOSSES):
        return DIVERGED
    return reported_status


def study_folder_name(study: str) -> str:
    """A study name as a folder name under ``results/``: anything but letters, digits, ``._-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", study).strip(".") or "_"


def sorted_epoch_rows(rows: list[dict]) -> list[dict]:
    """Per-epoch rows by epoch, one per epoch (a resumed run may log an epoch twice: the last one wins)."""
    by_epoch = {int(row[EPOCH]): row for row in rows if row.get(EPOCH) is not None}
    return [by_epoch[e] for e in sorted(by_epoch)]
