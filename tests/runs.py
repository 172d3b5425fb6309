"""Helpers shared by the resume, sweep and DDP tests: comparing two runs, and running fast on a busy CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dualadam.training import metrics as M
from dualadam.training.checkpoint import load_checkpoint
from dualadam.training.outputs import SUMMARY_FILE, read_metrics
from dualadam.training.run_directory import CHECKPOINT_FILE
from tests.conftest import REPO

TIMING_KEYS = (M.EPOCH_TIME, M.EVAL_TIME, M.THROUGHPUT)


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(Path(run_dir) / CHECKPOINT_FILE)["model"]


def assert_same_run(run_dir, reference_dir) -> None:
    """Identical metrics rows (timings aside) and bitwise-identical final weights."""
    assert without_timings(read_metrics(run_dir)) == without_timings(read_metrics(reference_dir))
    ours, theirs = final_weights(run_dir), final_weights(reference_dir)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def read_summary(run_dir) -> dict:
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine train several times faster on one thread (measured 6x with other
    jobs running); child processes get the same through ``child_env``. Use with ``pytest.mark.usefixtures``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child ``python`` training run: this checkout importable, one thread."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CI": "1", **extra}


def wandb_records(run_dir: Path) -> list[dict]:
    """The records W&B wrote to the run's ``.wandb`` transaction log, decoded by W&B's own reader."""
    (log,) = (Path(run_dir) / "wandb").glob("offline-run-*/run-*.wandb")
    wandb_cli = Path(sys.executable).with_name("wandb")
    result = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(log)], capture_output=True,
                            text=True, timeout=120, check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def wandb_summary(records: list[dict]) -> dict:
    """The run's final W&B summary: every summary update in ``wandb_records`` order, folded."""
    summary: dict = {}
    for record in records:
        if record["type"] == "summary":
            summary.update(record["summary"].get("update", {}))
    return summary
