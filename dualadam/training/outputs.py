"""What a run leaves in its directory: ``metrics.jsonl``, ``summary.json`` and, on failure, ``error.txt``.

``summary.json`` identifies the run by ``config_hash``: the sha256 of the resolved config without the keys
that only say where outputs and data live or how the run is watched (``IDENTITY_EXCLUDED_KEYS``), so the
same experiment launched twice, anywhere, has the same hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ERROR_FILE = "error.txt"

IDENTITY_EXCLUDED_KEYS = ("run_dir", "hydra", "logger", "cluster", "trainer.progress", "trainer.resume",
                          "trainer.check_every", "dataset.root", "dataset.download")
PACKAGES = ("dualadam", "torch", "torchvision", "timm", "hydra-core", "wandb", "numpy")


def identity_config(cfg: DictConfig) -> DictConfig:
    """A detached copy of ``cfg`` without ``IDENTITY_EXCLUDED_KEYS``: what makes two runs the same experiment."""
    identity = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(identity):
        for dotted in IDENTITY_EXCLUDED_KEYS:
            parent_key, _, leaf = dotted.rpartition(".")
            parent = OmegaConf.select(identity, parent_key) if parent_key else identity
            if isinstance(parent, DictConfig) and leaf in parent:
                del parent[leaf]
    return identity


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config minus ``IDENTITY_EXCLUDED_KEYS``, keys sorted."""
    text = OmegaConf.to_yaml(identity_config(cfg), resolve=True, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def git_commit() -> dict[str, object] | None:
    """The commit of the checkout this package runs from, and whether it had uncommitted changes.

    Read once per process (``train`` asks when its first run starts): a process runs the code it imported, so
    a commit made while a sweep runs must not be credited with the sweep's later runs."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


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


def _json_safe(value):
    """JSON has no NaN/inf; write them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


class RunOutputs:
    """The run directory's files. ``log_epoch`` appends one line per epoch and flushes, so a crash keeps
    every finished epoch."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    def log_epoch(self, record: dict[str, float]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(_json_safe(record)) + "\n")

    def write_summary(self, summary: dict) -> Path:
        path = self.run_dir / SUMMARY_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
        tmp.replace(path)  # atomic: a reader never sees half a summary
        return path

    def write_error(self) -> Path:
        """The current exception's traceback, for runs that die where nobody watches the console."""
        path = self.run_dir / ERROR_FILE
        path.write_text("".join(traceback.format_exception(*sys.exc_info())))
        return path


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch records of a run, in order."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
