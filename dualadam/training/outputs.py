"""What a run leaves in its directory: ``metrics.jsonl``, ``summary.json``, ``config.json`` (what was trained,
written once by the first attempt), ``attempt-<n>.diff`` (uncommitted code) and, on failure, ``error.txt``.

``summary.json`` identifies the run by ``config_hash``: the sha256 of the resolved config without the settings
that cannot change a result (``IDENTITY_EXCLUDED_KEYS``: where outputs and data live, how the run is watched,
loader and evaluation batch settings), with keys added to the config later dropped while they hold their
default (``ADDED_KEY_DEFAULTS``) and machine settings that resolve as ``auto`` would written ``auto``
(``RUNTIME_AUTO_KEYS``). So the same experiment launched twice, anywhere, has the same hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from dualadam.atomic_files import append_line_durably, atomic_write_json, atomic_write_text, strict_json

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ERROR_FILE = "error.txt"

CONFIG_FILE = "config.json"

IDENTITY_EXCLUDED_KEYS = ("run_dir", "hydra", "logger", "cluster", "trainer.progress", "trainer.resume",
                          "trainer.check_every", "trainer.num_workers", "trainer.eval_batch_size",
                          "dataset.root", "dataset.download", "dataset.memory_budget_gb")
# Keys added to the configs after runs were made: at these values they change nothing the earlier runs did,
# so they are left out of the identity and the earlier runs keep their hash (and resume, or are skipped).
ADDED_KEY_DEFAULTS = {"trainer.eval_before_training": False, "trainer.grad_clip_norm": None,
                      "trainer.grad_accum_steps": 1, "trainer.label_smoothing": 0.0}
# Machine settings whose ``auto`` depends on the device; a value equal to what ``auto`` resolves to on this
# machine counts as ``auto`` (``trainer.device=cpu`` on a CPU host is the same run as ``auto``).
RUNTIME_AUTO_KEYS = ("trainer.device", "trainer.fused_optimizer", "trainer.precision", "trainer.channels_last")
PACKAGES = ("dualadam", "torch", "torchvision", "timm", "hydra-core", "wandb", "numpy")


def identity_config(cfg: DictConfig) -> DictConfig:
    """A detached copy of ``cfg`` as the identity sees it (module docstring): what makes two runs the same
    experiment."""
    identity = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(identity):
        for dotted in IDENTITY_EXCLUDED_KEYS:
            _delete(identity, dotted)
        for dotted, default in ADDED_KEY_DEFAULTS.items():
            if OmegaConf.select(identity, dotted, default=None) == default:
                _delete(identity, dotted)
        try:
            _write_auto_where_it_resolves_the_same(identity)
        except Exception:  # an invalid device or precision: validation names it; the identity keeps it as set
            pass
    return identity


def _delete(cfg: DictConfig, dotted: str) -> None:
    parent_key, _, leaf = dotted.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if isinstance(parent, DictConfig) and leaf in parent:
        del parent[leaf]


def _write_auto_where_it_resolves_the_same(identity: DictConfig) -> None:
    trainer = identity.get("trainer")
    if not isinstance(trainer, DictConfig) or "device" not in trainer:
        return
    from dualadam.training.runtime import resolve_device, resolve_runtime

    device = resolve_device(str(trainer.device))
    auto = resolve_runtime(OmegaConf.merge(trainer, {"precision": "auto", "channels_last": "auto"}))
    chosen = resolve_runtime(trainer)
    for leaf in ("precision", "channels_last"):
        if leaf in trainer and getattr(chosen, leaf) == getattr(auto, leaf):
            trainer[leaf] = "auto"
    fused = trainer.get("fused_optimizer")
    if fused is not None and fused != "auto" and bool(fused) == _fused_when_auto(identity, device):
        trainer.fused_optimizer = "auto"
    if device == resolve_device("auto"):
        trainer.device = "auto"


def _fused_when_auto(cfg: DictConfig, device: torch.device) -> bool:
    """Whether ``trainer.fused_optimizer=auto`` takes the optimizer's fused path on ``device``."""
    from dualadam.training.optimizers import has_fused_path

    name = OmegaConf.select(cfg, "optimizer.name", default=None)
    try:
        return device.type == "cuda" and name is not None and has_fused_path(str(name))
    except Exception:  # an unknown optimizer name: validation reports it; the identity keeps the value as set
        return False


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config minus ``IDENTITY_EXCLUDED_KEYS``, keys sorted."""
    text = OmegaConf.to_yaml(identity_config(cfg), resolve=True, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def git_commit() -> dict[str, object] | None:
    """The commit of the checkout this package runs from, whether it had uncommitted changes and, if so, the
    changes themselves (``diff``: ``git diff HEAD`` and the list of untracked files).

    Read once per process (``train`` asks when its first run starts): a process runs the code it imported, so
    a commit made while a sweep runs must not be credited with the sweep's later runs."""
    repo = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30,
                              check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
        diff = None
        if dirty:
            untracked = git("ls-files", "--others", "--exclude-standard")
            diff = git("diff", "HEAD") + "".join(f"# untracked: {name}\n" for name in untracked.splitlines())
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty, "diff": diff}


def code_version() -> dict[str, object] | None:
    """``git_commit`` without the diff: what ``summary.json`` names (the diff is a file of its own)."""
    found = git_commit()
    return None if found is None else {"commit": found["commit"], "dirty": found["dirty"]}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def hardware(device: torch.device) -> dict[str, object]:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"device": str(device), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "gpu": gpus[0] if gpus else None, "gpu_count": len(gpus),
            "platform": platform.platform()}


class RunOutputs:
    """The run directory's files. ``log_epoch`` appends one line per epoch and fsyncs it, so a crash keeps
    every finished epoch, and a checkpoint written after it never runs ahead of the metrics on disk."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    def log_epoch(self, record: dict[str, float]) -> None:
        append_line_durably(self.metrics_path, metrics_line(record))

    def write_summary(self, summary: dict) -> Path:
        path = self.run_dir / SUMMARY_FILE
        atomic_write_json(path, summary)  # never half a summary
        return path

    def write_error(self) -> Path:
        """The current exception's traceback, for runs that die where nobody watches the console."""
        path = self.run_dir / ERROR_FILE
        atomic_write_text(path, "".join(traceback.format_exception(*sys.exc_info())))
        return path

    def write_diff(self, attempt: int, diff: str) -> str:
        """An attempt's uncommitted code changes, as ``attempt-<n>.diff``; returns the file's name."""
        name = f"attempt-{attempt}.diff"
        atomic_write_text(self.run_dir / name, diff)
        return name


def run_config_record(cfg: DictConfig, choices: dict | None = None) -> dict:
    """What ``config.json`` holds: the run's identity (``config_hash`` and the config it hashes), the whole
    resolved config of the first attempt (``logger.group`` names the study) and Hydra's group choices
    (``optimizer: adam_matched_warmup``)."""
    full = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(full):
        for key in ("run_dir", "hydra"):
            if key in full:
                del full[key]   # not pop(): that would resolve the value first
    return {"config_hash": config_hash(cfg),
            "identity": OmegaConf.to_container(identity_config(cfg), resolve=True),
            "config": OmegaConf.to_container(full, resolve=True), "choices": dict(choices or {})}


def write_run_config(run_dir: str | Path, record: dict) -> bool:
    """Write ``config.json`` unless the run has one: it is written once, by the run's first attempt, and no
    later launch (another ``logger.group``, a refused or skipped one) changes what the run was."""
    path = Path(run_dir) / CONFIG_FILE
    if path.is_file() and read_run_config(run_dir) is not None:
        return False
    atomic_write_json(path, record, sort_keys=True)
    return True


def read_run_config(run_dir: str | Path) -> dict | None:
    """``config.json`` (see ``run_config_record``), or None when there is none or it is damaged."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def metrics_line(record: dict) -> str:
    """A metrics row as its line of ``metrics.jsonl`` (without the newline)."""
    return strict_json(record)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch records of a run, in order. Raises ``json.JSONDecodeError`` on a damaged line (a run
    repairs its own file on resume: ``run_directory.repair_metrics``; see ``read_metrics_lines``)."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_metrics_lines(run_dir: str | Path) -> tuple[list[dict], int]:
    """The rows of ``metrics.jsonl`` that parse, and how many lines did not (torn by a crash, or damaged)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return [], 0
    rows, damaged = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            damaged += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            damaged += 1
    return rows, damaged
