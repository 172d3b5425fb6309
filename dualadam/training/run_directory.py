"""A run's directory is a function of its identity, so rerunning a command or a sweep finds its earlier runs.

Identity is ``config_hash(cfg)`` (the resolved config, seed included, minus the keys that only say where files
go or how a run is watched). The default directories (``configs/train.yaml``) are ``outputs/runs/<run_name>``
for single runs and sweep jobs alike, where ``run_name`` is a readable prefix plus the hash's first
``NAME_HASH_CHARS`` characters, e.g. ``dualadam-resnet18_cifar-cifar10-seed42-3f9a1c2b7d``.

What a run finds in its directory decides what it does (``plan_run_start``, always under the run's lock):

- a checkpoint, ``summary.json`` or ``config.json`` of another experiment: ``RunDirectoryConflict``, nothing is
  touched (a run recorded under older identity rules is the same experiment when its recorded config, read
  with today's rules, is ours);
- ``status`` ``completed`` or ``diverged``: the run is finished and is skipped, its files untouched;
- otherwise (``running`` after a kill, ``preempted``, ``failed``, ``interrupted``) with a checkpoint: resume
  from ``last.pt``, or from ``previous.pt`` when ``last.pt`` is damaged (it is kept as ``last.pt.corrupt``);
- nothing, or no checkpoint yet: start from scratch.

Before a run resumes or starts, its records are made whole: temporary files of interrupted writes go, and
``metrics.jsonl`` is rewritten to hold exactly the checkpoint's epochs (rows logged after the last checkpoint
dropped; missing or torn rows rebuilt from the rows the checkpoint carries, with a warning). A row that
contradicts the checkpoint cannot be repaired: the run fails with ``RunRecordsDamaged`` in ``error.txt``. A
damaged ``summary.json`` is rebuilt by the attempt (from the checkpoint when there is one).

``trainer.resume=false`` removes the previous outputs and starts over.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dualadam.atomic_files import atomic_write_text, remove_stale_temporaries
from dualadam.training.checkpoint import load_newest_good
from dualadam.training.optimizers import optimizer_label
from dualadam.training.outputs import (
    CONFIG_FILE,
    ERROR_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    config_hash,
    identity_config,
    metrics_line,
    read_metrics_lines,
    read_run_config,
)

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
PREVIOUS_CHECKPOINT_FILE = "previous.pt"   # the checkpoint before last.pt: the fallback when last.pt is damaged
CORRUPT_SUFFIX = ".corrupt"                # a damaged last.pt, moved aside for a look
LOCK_FILE = ".lock"
FINISHED = ("completed", "diverged")   # rerunning these would only repeat them
NAME_HASH_CHARS = 10
# After the optimizer's label: the model's and the dataset's names, each the first of its keys that is set.
# Your own model and data (model=custom, dataset=image_folder) are named after the class and the folder.
NAME_KEYS = (("model.display_name", "model._target_", "model.name"),
             ("dataset.display_name", "dataset.path", "dataset.name"))


def _name_part(cfg: DictConfig, keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` set in ``cfg``; an import path is shortened to its last name, a path to its folder."""
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is None or value == "???":
            continue
        if key.endswith("_target_"):
            return str(value).rsplit(".", 1)[-1]
        if key.endswith(".path"):
            return Path(os.path.abspath(os.path.expanduser(str(value)))).name
        return str(value)
    return None


def run_name(cfg: DictConfig) -> str:
    """``<optimizer>-<model>-<dataset>-seed<seed>-<hash prefix>``, from whichever of those keys ``cfg`` has
    (the optimizer as ``optimizer_label`` calls it: ``adam_matched_warmup``, not ``adam``)."""
    optimizer = OmegaConf.select(cfg, "optimizer", default=None)
    parts = [None if optimizer is None else optimizer_label(optimizer), *(_name_part(cfg, k) for k in NAME_KEYS)]
    parts = [str(part) for part in parts if part is not None]
    seed = OmegaConf.select(cfg, "seed", default=None)
    if seed is not None:
        parts.append(f"seed{seed}")
    readable = re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(parts))
    return f"{readable}-{config_hash(cfg)[:NAME_HASH_CHARS]}" if readable else config_hash(cfg)[:NAME_HASH_CHARS]


def register_resolvers() -> None:
    """``${run_name:}`` in configs: the name of the run the whole (root) config describes."""
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", lambda *, _root_: run_name(_root_))


class RunDirectoryConflict(RuntimeError):
    """The run directory holds a run of a different config; resuming it would mix two experiments."""


class RunInProgress(RuntimeError):
    """Another process is running this run right now."""


class RunRecordsDamaged(RuntimeError):
    """``metrics.jsonl`` contradicts the checkpoint, or cannot be rebuilt from it."""


class RunLock:
    """An exclusive lock on ``<run_dir>/.lock`` while the run is active.

    It is a POSIX record lock (``fcntl.lockf``), owned by this process alone: forked DataLoader workers do not
    hold it (an ``flock`` is shared with every forked child, so after a SIGKILL the orphaned workers kept the
    run locked for seconds). The OS drops it the moment this process dies, even by SIGKILL. POSIX locks do not
    exclude the owning process itself, so a set of the paths this process holds refuses a second ``RunLock``
    here too. Where the filesystem has no locks (some network mounts), the run goes on unlocked with a
    warning."""

    _held_here: set[Path] = set()   # run directories this process has locked

    def __init__(self, run_dir: Path, *, enabled: bool = True):
        self.path = Path(run_dir) / LOCK_FILE
        self.enabled = enabled
        self._file = None

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if key in RunLock._held_here:
            raise self._in_progress(f"pid {os.getpid()} on {os.uname().nodename}, this very process")
        self._file = open(self.path, "a+")
        try:
            fcntl.lockf(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            self._file = None
            raise self._in_progress(holder) from None
        except OSError as error:
            log.warning("Could not lock %s (%s); make sure no other process runs this run", self.path, error)
        RunLock._held_here.add(key)
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        self._file.flush()
        return self

    def _in_progress(self, holder: str) -> RunInProgress:
        return RunInProgress(f"{self.path.parent} is being trained by another process ({holder}); wait for it "
                             "to finish, or stop it first. The lock is the process's own and is freed the moment "
                             "it dies, so a holder named here is alive (check with `ps -p <pid>` on that host)")

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            RunLock._held_here.discard(self.path.resolve())
            self._file.close()  # releases the lock
            self._file = None


@dataclass
class RunStart:
    """What this run does with its directory: ``"skip"``, ``"resume"`` or ``"start"``."""

    action: str
    previous: dict | None = None        # the summary.json found, if any (None when damaged)
    checkpoint: dict | None = field(default=None, repr=False)  # the verified payload resumed from
    load_error: Exception | None = None  # damaged records: the run fails with it, and says so in its files
    checkpoint_file: Path | None = None  # the file ``checkpoint`` came from: last.pt or previous.pt
    rows: list[dict] | None = field(default=None, repr=False)  # metrics rows of the checkpoint's epochs

    @property
    def wandb_run_id(self) -> str | None:
        """The W&B run to continue: the checkpoint's, or the one a killed first epoch had already started."""
        if self.checkpoint is not None:
            return self.checkpoint["train_state"]["wandb_run_id"]
        return ((self.previous or {}).get("wandb") or {}).get("run_id")


def read_summary(run_dir: Path) -> dict | None:
    """``summary.json``, or None when there is none or it is damaged (with a warning: the attempt that runs
    now writes it again)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        log.warning("%s is damaged (%s); it is rebuilt by this attempt", path, error)
        return None
    return summary if isinstance(summary, dict) else None


def _conflict(run_dir: Path, theirs: str, ours: str, their_config: dict | None, cfg: DictConfig) -> Exception:
    differing = ""
    if their_config is not None:
        mine = OmegaConf.to_container(identity_config(cfg), resolve=True)
        keys = sorted(_differing_keys(their_config, mine))
        differing = f" Keys that differ (there -> here): {'; '.join(keys[:10])}."
    return RunDirectoryConflict(
        f"{run_dir} holds a run of a different config (config_hash {theirs[:12]}... there, {ours[:12]}... "
        f"here), so it cannot be resumed.{differing} Choose another directory (hydra.run.dir=...), or pass "
        "trainer.resume=false to delete that run's outputs and start over there.")


def _differing_keys(theirs: dict, ours: dict, prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(key, "<missing>"), ours.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differing_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return found


def check_identity(run_dir: Path, cfg: DictConfig, checkpoint: dict | None, previous: dict | None) -> None:
    """Raise ``RunDirectoryConflict`` unless every record in ``run_dir`` is of the experiment ``cfg`` says."""
    ours = config_hash(cfg)
    recorded = read_run_config(run_dir) or {}
    for theirs, their_config in (((checkpoint or {}).get("config_hash"), (checkpoint or {}).get("config")),
                                 ((previous or {}).get("config_hash"), None),
                                 (recorded.get("config_hash"), recorded.get("identity"))):
        if theirs is None or theirs == ours:
            continue
        their_config = their_config or (checkpoint or {}).get("config") or recorded.get("identity")
        if their_config is not None and _same_under_todays_rules(their_config, cfg):
            log.info("%s was recorded under older identity rules (config_hash %s...); it is the same experiment",
                     run_dir, theirs[:12])
            continue
        raise _conflict(run_dir, theirs, ours, their_config, cfg)


def _same_under_todays_rules(their_config: dict, cfg: DictConfig) -> bool:
    theirs = OmegaConf.to_container(identity_config(OmegaConf.create(their_config)), resolve=True)
    return theirs == OmegaConf.to_container(identity_config(cfg), resolve=True)


def clear_outputs(run_dir: Path) -> None:
    """Delete a previous run's records (``trainer.resume=false``)."""
    names = (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, METRICS_FILE, SUMMARY_FILE, ERROR_FILE, CONFIG_FILE)
    removed = [path for path in [*(Path(run_dir) / n for n in names), *Path(run_dir).glob("attempt-*.diff")]
               if path.exists()]
    for path in removed:
        path.unlink()
    if removed:
        log.warning("trainer.resume=false: removed %s from %s and starting over",
                    ", ".join(p.name for p in removed), run_dir)


def repair_metrics(run_dir: Path, checkpoint: dict | None) -> list[dict]:
    """Make ``metrics.jsonl`` hold exactly the rows of the checkpoint's epochs, and return them.

    Rows logged after the checkpoint go (those epochs train again). Missing or torn rows are rebuilt from the
    rows the checkpoint carries, with a warning. A complete row that differs from the checkpoint's, or a gap
    that a checkpoint without rows (an older format) cannot fill, raises ``RunRecordsDamaged``."""
    path = Path(run_dir) / METRICS_FILE
    epochs = checkpoint["train_state"]["epochs_completed"] if checkpoint else 0
    saved = checkpoint["train_state"].get("rows") if checkpoint else []
    found, damaged = read_metrics_lines(run_dir)
    kept = [row for row in found if isinstance(row.get("epoch"), int) and row["epoch"] <= epochs]
    if saved is not None and len(saved) == epochs:
        for row in kept:
            if row != saved[row["epoch"] - 1]:
                raise RunRecordsDamaged(
                    f"{path}: the row of epoch {row['epoch']} differs from the one the checkpoint recorded, so "
                    "one of them is not this run's. Look at the file; to train the run again from scratch, "
                    "set trainer.resume=false")
        rows = saved
    elif [row["epoch"] for row in kept] == list(range(1, epochs + 1)):
        rows = kept
    else:
        raise RunRecordsDamaged(
            f"{path} does not hold epochs 1-{epochs} (it has {[row.get('epoch') for row in found]}, "
            f"{damaged} damaged lines) and the checkpoint, from an older version, carries no rows to rebuild "
            "them from. Restore the file, or set trainer.resume=false to train the run again")
    text = "".join(metrics_line(row) + "\n" for row in rows)
    if path.is_file() and path.read_text(errors="replace") == text:
        return rows
    missing = sorted(set(range(1, epochs + 1)) - {row["epoch"] for row in kept})
    if missing or damaged:
        log.warning("%s: rebuilt from the checkpoint (epochs %s missing, %d damaged lines)", path, missing, damaged)
    elif len(found) > len(rows):
        log.info("Dropped %d metrics rows logged after the last checkpoint (epoch %d)", len(found) - len(rows),
                 epochs)
    if rows or path.is_file():
        atomic_write_text(path, text)
    return rows


def _set_aside(damaged: Path) -> None:
    """Keep a damaged ``last.pt`` for a look, where the next save does not rotate it over ``previous.pt``."""
    damaged.replace(damaged.with_name(damaged.name + CORRUPT_SUFFIX))


def plan_run_start(run_dir: Path, cfg: DictConfig, *, resume: bool) -> RunStart:
    """Inspect ``run_dir`` and decide (see the module docstring). Writes nothing unless ``resume`` is false or
    the run will resume/start (then its records are made whole and a previous attempt's ``error.txt`` goes)."""
    run_dir = Path(run_dir)
    if not resume:
        clear_outputs(run_dir)
        return RunStart("start")
    previous = read_summary(run_dir)
    checkpoint, used, errors = load_newest_good(run_dir / CHECKPOINT_FILE, run_dir / PREVIOUS_CHECKPOINT_FILE)
    check_identity(run_dir, cfg, checkpoint, previous)
    if previous is not None and previous.get("status") in FINISHED:
        return RunStart("skip", previous=previous)
    if checkpoint is None and errors:  # fail, and leave the directory as it is for a look
        return RunStart("start", previous=previous, load_error=errors[0])
    if previous is not None:
        log.info("Previous attempt in %s ended with status %r", run_dir, previous.get("status"))
    remove_stale_temporaries(run_dir)
    if used is not None and used.name != CHECKPOINT_FILE and (run_dir / CHECKPOINT_FILE).is_file():
        _set_aside(run_dir / CHECKPOINT_FILE)
    try:
        rows = repair_metrics(run_dir, checkpoint)
    except RunRecordsDamaged as error:
        return RunStart("start", previous=previous, load_error=error)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    return RunStart("resume" if checkpoint else "start", previous=previous, checkpoint=checkpoint,
                    checkpoint_file=used, rows=rows)
