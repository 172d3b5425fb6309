"""A run's directory is a function of its identity, so rerunning a command or a sweep finds its earlier runs.

Identity is ``config_hash(cfg)`` (the resolved config, seed included, minus the keys that only say where files
go or how a run is watched). The default directories (``configs/train.yaml``) are ``outputs/runs/<run_name>``
for single runs and sweep jobs alike, where ``run_name`` is a readable prefix plus the hash's first
``NAME_HASH_CHARS`` characters, e.g. ``dualadam-resnet18_cifar-cifar10-seed42-3f9a1c2b7d``.

What a run finds in its directory decides what it does (``plan_run_start``):

- ``summary.json`` with another ``config_hash``: ``RunDirectoryConflict``, nothing is touched;
- ``status`` ``completed`` or ``diverged``: the run is finished and is skipped, its files untouched;
- otherwise (``running`` after a kill, ``preempted``, ``failed``, ``interrupted``) with ``last.pt``: resume;
- nothing, or no checkpoint yet: start from scratch.

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

from dualadam.training.checkpoint import CorruptCheckpointError, load_checkpoint
from dualadam.training.optimizers import optimizer_label
from dualadam.training.outputs import (
    ERROR_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    config_hash,
    identity_config,
    read_metrics,
)

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
LOCK_FILE = ".lock"
FINISHED = ("completed", "diverged")   # rerunning these would only repeat them
NAME_HASH_CHARS = 10
NAME_KEYS = ("model.name", "dataset.name")   # after the optimizer's label


def run_name(cfg: DictConfig) -> str:
    """``<optimizer>-<model>-<dataset>-seed<seed>-<hash prefix>``, from whichever of those keys ``cfg`` has
    (the optimizer as ``optimizer_label`` calls it: ``adam_matched_warmup``, not ``adam``)."""
    optimizer = OmegaConf.select(cfg, "optimizer", default=None)
    parts = [None if optimizer is None else optimizer_label(optimizer),
             *(OmegaConf.select(cfg, key, default=None) for key in NAME_KEYS)]
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
    previous: dict | None = None        # the summary.json found, if any
    checkpoint: dict | None = field(default=None, repr=False)  # the verified payload of last.pt (resume)
    load_error: Exception | None = None  # a corrupt last.pt: the run fails with it, and says so in its files

    @property
    def wandb_run_id(self) -> str | None:
        """The W&B run to continue: the checkpoint's, or the one a killed first epoch had already started."""
        if self.checkpoint is not None:
            return self.checkpoint["train_state"]["wandb_run_id"]
        return ((self.previous or {}).get("wandb") or {}).get("run_id")


def read_summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


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


def clear_outputs(run_dir: Path) -> None:
    """Delete a previous run's checkpoint, metrics, summary and error (``trainer.resume=false``)."""
    removed = [name for name in (CHECKPOINT_FILE, METRICS_FILE, SUMMARY_FILE, ERROR_FILE)
               if (Path(run_dir) / name).exists()]
    for name in removed:
        (Path(run_dir) / name).unlink()
    if removed:
        log.warning("trainer.resume=false: removed %s from %s and starting over", ", ".join(removed), run_dir)


def keep_metrics_rows(run_dir: Path, epochs: int) -> None:
    """Keep the first ``epochs`` rows of ``metrics.jsonl``: a run killed after logging an epoch but before
    checkpointing it trains that epoch again, and must not record it twice."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    rows = read_metrics(run_dir)
    if len(rows) <= epochs:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:epochs]))
    tmp.replace(path)
    log.info("Dropped %d metrics rows logged after the last checkpoint (epoch %d)", len(rows) - epochs, epochs)


def plan_run_start(run_dir: Path, cfg: DictConfig, *, resume: bool) -> RunStart:
    """Inspect ``run_dir`` and decide (see the module docstring). Writes nothing unless ``resume`` is false or
    the run will resume/start (then stale metrics rows and a previous attempt's ``error.txt`` go)."""
    run_dir = Path(run_dir)
    if not resume:
        clear_outputs(run_dir)
        return RunStart("start")
    identity = config_hash(cfg)
    previous = read_summary(run_dir)
    checkpoint, load_error = None, None
    if (run_dir / CHECKPOINT_FILE).is_file():
        try:
            checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
        except CorruptCheckpointError as error:
            load_error = error
    theirs = (checkpoint or {}).get("config_hash") or (previous or {}).get("config_hash")
    if theirs is not None and theirs != identity:
        raise _conflict(run_dir, theirs, identity, (checkpoint or {}).get("config"), cfg)
    if previous is not None and previous.get("status") in FINISHED:
        return RunStart("skip", previous=previous)
    if load_error is not None:  # fail, and leave the directory as it is for a look
        return RunStart("start", previous=previous, load_error=load_error)
    if previous is not None:
        log.info("Previous attempt in %s ended with status %r", run_dir, previous.get("status"))
    keep_metrics_rows(run_dir, checkpoint["train_state"]["epochs_completed"] if checkpoint else 0)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    return RunStart("resume" if checkpoint else "start", previous=previous, checkpoint=checkpoint)
