"""The records around a run, as the tables read them: what a run trained is its own ``config.json``, written
once, whatever later launches do; every attempt names its code, with the diff itself when the tree was dirty."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from dualadam.reporting.local_runs import read_local_run
from dualadam.training.outputs import CONFIG_FILE, SUMMARY_FILE
from tests.conftest import FAST_OVERRIDES, REPO, SMALL_SYNTHETIC
from tests.runs import child_env


def launch(*overrides: str) -> subprocess.CompletedProcess:
    """``python -m dualadam.train`` (one run, through Hydra, which writes ``.hydra/`` at every launch)."""
    return subprocess.run([sys.executable, "-m", "dualadam.train", *FAST_OVERRIDES, *SMALL_SYNTHETIC, *overrides],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)


def test_refused_and_skipped_launches_change_nothing_the_tables_read(tmp_path, isolated_wandb):
    run_dir = tmp_path / "run"
    trained = launch(f"hydra.run.dir={run_dir}", "logger.group=study_a", "optimizer=dualadam", "optimizer.lr=0.01",
                     "seed=42")
    assert trained.returncode == 0, trained.stderr[-3000:]
    record = json.loads((run_dir / CONFIG_FILE).read_text())

    # Another experiment in the same folder is refused, after Hydra rewrote .hydra/ for it.
    refused = launch(f"hydra.run.dir={run_dir}", "logger.group=study_a", "optimizer=adam", "optimizer.lr=0.5",
                     "seed=7")
    assert refused.returncode != 0 and "RunDirectoryConflict" in refused.stderr
    assert "optimizer: adam" in (run_dir / ".hydra" / "hydra.yaml").read_text()
    # The same experiment under another study is skipped: logger.group does not change what a run is.
    skipped = launch(f"hydra.run.dir={run_dir}", "logger.group=study_b", "optimizer=dualadam",
                     "optimizer.lr=0.01", "seed=42")
    assert skipped.returncode == 0 and "run already completed; skipped" in skipped.stdout

    assert json.loads((run_dir / CONFIG_FILE).read_text()) == record
    seen = read_local_run(run_dir, "run")
    assert (seen.study, seen.optimizer, seen.lr, seen.seed) == ("study_a", "dualadam", 0.01, 42)


def copy_of_the_package_in_a_git_repository(folder: Path) -> Path:
    """A checkout of its own, committed: ``dualadam/`` and ``configs/``, so a test can make it dirty."""
    ignore = shutil.ignore_patterns("__pycache__", "local")
    shutil.copytree(REPO / "dualadam", folder / "dualadam", ignore=ignore)
    shutil.copytree(REPO / "configs", folder / "configs", ignore=ignore)
    git(folder, "init", "-q")
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "first")
    return folder


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=folder,
                          capture_output=True, text=True, check=True).stdout


def train_from(checkout: Path, run_dir: Path, stop_at_step: int | None) -> subprocess.CompletedProcess:
    """Train a tiny run with the code in ``checkout``, SIGTERMed after ``stop_at_step`` if given."""
    code = textwrap.dedent(f"""
        import os, signal
        from hydra import compose, initialize_config_dir
        from omegaconf import open_dict
        from dualadam.train import train
        from dualadam.training.trainer import Trainer

        step = Trainer.optimizer_step
        def step_then_stop(self, loss):
            step(self, loss)
            if self.scheduler.last_epoch == {stop_at_step!r}:
                os.kill(os.getpid(), signal.SIGTERM)
        Trainer.optimizer_step = step_then_stop
        overrides = {[*FAST_OVERRIDES, *SMALL_SYNTHETIC, "trainer.epochs=2", "logger.group=provenance"]!r}
        with initialize_config_dir(config_dir={str(checkout / "configs")!r}, version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
        with open_dict(cfg):
            cfg.run_dir = {str(run_dir)!r}
        print(train(cfg)["status"])
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=checkout, env=child_env(PYTHONPATH=str(checkout)),
                          capture_output=True, text=True, timeout=300)


def test_every_attempt_names_its_code_and_a_dirty_tree_keeps_its_diff(tmp_path, isolated_wandb):
    checkout = copy_of_the_package_in_a_git_repository(tmp_path / "checkout")
    first_commit = git(checkout, "rev-parse", "HEAD").strip()
    metrics = checkout / "dualadam" / "training" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\n# an uncommitted change\n")
    (checkout / "notes.txt").write_text("an untracked file\n")
    run_dir = tmp_path / "run"

    stopped = train_from(checkout, run_dir, stop_at_step=2)
    assert stopped.stdout.strip().endswith("preempted"), stopped.stderr[-3000:]
    diff = (run_dir / "attempt-1.diff").read_text()
    assert "+# an uncommitted change" in diff and "# untracked: notes.txt" in diff

    git(checkout, "commit", "-qam", "second")   # the run is resumed under new code, from a clean tree
    second_commit = git(checkout, "rev-parse", "HEAD").strip()
    resumed = train_from(checkout, run_dir, stop_at_step=None)
    assert resumed.stdout.strip().endswith("completed"), resumed.stderr[-3000:]

    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    attempts = [(a["attempt"], a["commit"], a["dirty"], a["diff"]) for a in summary["attempts"]]
    assert attempts == [(1, first_commit, True, "attempt-1.diff"), (2, second_commit, False, None)]
    assert all(a["versions"]["torch"] for a in summary["attempts"])
    assert summary["git"] == {"commit": second_commit, "dirty": False}
    assert not (run_dir / "attempt-2.diff").exists()
    seen = read_local_run(run_dir, "run")
    assert (seen.commit, seen.dirty) == (f"{first_commit} {second_commit}", True)
