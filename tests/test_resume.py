"""Exact resume: a run stopped any way (SIGKILL, SIGTERM) and rerun ends exactly as an uninterrupted one;
divergence stops a run without touching its last good checkpoint; bad checkpoints and foreign run directories
are refused, never loaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from dualadam.tasks.image.data import build_image_data
from dualadam.train import train
from dualadam.training import metrics as M
from dualadam.training.checkpoint import CorruptCheckpointError, load_checkpoint
from dualadam.training.outputs import ERROR_FILE, METRICS_FILE, SUMMARY_FILE, config_hash, read_metrics
from dualadam.training.run_directory import (
    CHECKPOINT_FILE,
    PREVIOUS_CHECKPOINT_FILE,
    RunDirectoryConflict,
    RunInProgress,
    RunLock,
    RunRecordsDamaged,
    run_name,
)
from dualadam.training.trainer import Trainer, epoch_batches
from tests.conftest import REPO, compose_train_config
from tests.runs import (  # noqa: F401  (one_thread: fixture)
    assert_same_run,
    child_env,
    final_weights,
    one_thread,
    read_summary,
    without_timings,
)

# A tiny ResNet with batch norm (running statistics) and stochastic depth (draws from torch's RNG at every
# step), so a resume that missed a buffer or an RNG state would show. 128 training images in batches of 32:
# 4 optimizer steps per epoch, 12 in all.
RESUME_OVERRIDES = ("model=timm", "model.name=test_resnet", "+model.kwargs.drop_path_rate=0.1",
                    "dataset=synthetic", "dataset.train_size=128", "dataset.test_size=64", "trainer.epochs=3",
                    "trainer.batch_size=32", "trainer.eval_batch_size=64", "trainer.num_workers=0",
                    "trainer.progress=false", "trainer.check_every=3", "logger.mode=disabled", "logger.console=off")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, one_thread) -> Path:  # noqa: F811  (a fixture)
    """The uninterrupted run every interrupted one must reproduce."""
    cfg = compose_train_config(RESUME_OVERRIDES, fast=False)
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path_factory.mktemp("reference"))
    assert train(cfg)["status"] == "completed"
    return Path(cfg.run_dir)


def signal_self_after_step(monkeypatch, step: int, signum: int = signal.SIGTERM) -> None:
    """Deliver a real ``signum`` to this process right after optimizer step ``step`` (1-based), as SLURM would
    at an arbitrary moment, but at a moment the test can name."""
    original = Trainer.optimizer_step

    def step_then_signal(self, loss):
        original(self, loss)
        if self.scheduler.last_epoch == step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(Trainer, "optimizer_step", step_then_signal)


def run_and_sigkill(run_dir: Path, kill_where: str) -> subprocess.CompletedProcess:
    """Train ``RESUME_OVERRIDES`` into ``run_dir`` in a child process that SIGKILLs itself (no chance to save
    anything) at ``kill_where``: ``"step 6"`` (mid epoch 2) or ``"row 3"`` (after epoch 3's metrics row is
    written, before its checkpoint)."""
    what, number = kill_where.split()
    code = textwrap.dedent(f"""
        import os, signal, torch
        from omegaconf import open_dict
        from dualadam.training.outputs import RunOutputs
        from dualadam.train import train
        from dualadam.training.trainer import Trainer
        from tests.conftest import compose_train_config

        torch.set_num_threads({torch.get_num_threads()})  # the same float sums as the resuming test process
        step, log_epoch = Trainer.optimizer_step, RunOutputs.log_epoch
        def step_then_kill(self, loss):
            step(self, loss)
            if {what == "step"} and self.scheduler.last_epoch == {number}:
                os.kill(os.getpid(), signal.SIGKILL)
        def log_then_kill(self, record):
            log_epoch(self, record)
            if {what == "row"} and record["epoch"] == {number}:
                os.kill(os.getpid(), signal.SIGKILL)
        Trainer.optimizer_step, RunOutputs.log_epoch = step_then_kill, log_then_kill
        cfg = compose_train_config({list(RESUME_OVERRIDES)!r}, fast=False)
        with open_dict(cfg):
            cfg.run_dir = {str(run_dir)!r}
        train(cfg)
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=child_env())


def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path, reference_run, isolated_wandb):
    run_dir = tmp_path / "run"
    killed = run_and_sigkill(run_dir, "step 6")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert read_summary(run_dir)["status"] == "running"  # what a killed run leaves behind
    assert load_checkpoint(run_dir / CHECKPOINT_FILE)["train_state"]["epochs_completed"] == 1

    # Killed again, between writing epoch 3's row and checkpointing it: the rerun must not record it twice.
    killed = run_and_sigkill(run_dir, "row 3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(read_metrics(run_dir)) == 3
    assert load_checkpoint(run_dir / CHECKPOINT_FILE)["train_state"]["epochs_completed"] == 2

    cfg = compose_train_config(RESUME_OVERRIDES, fast=False)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    assert train(cfg)["status"] == "completed"
    assert_same_run(run_dir, reference_run)


def test_sigterm_mid_epoch_saves_that_step_and_the_rerun_continues_it_exactly(make_cfg, reference_run,
                                                                              monkeypatch):
    cfg = make_cfg(*RESUME_OVERRIDES, "logger.mode=offline", fast=False)
    signal_self_after_step(monkeypatch, 6)  # the 2nd of epoch 2's 4 steps
    stopped = train(cfg)
    assert stopped["status"] == "preempted"
    assert stopped["preempted"] == {"signal": "SIGTERM", "step": 6}
    saved = load_checkpoint(Path(cfg.run_dir) / CHECKPOINT_FILE)
    assert saved["train_state"]["in_epoch"]["epoch"] == 1 and saved["train_state"]["in_epoch"]["batches"] == 2
    assert saved["scheduler"]["last_epoch"] == 6
    assert len(read_metrics(cfg.run_dir)) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's handler is gone again

    monkeypatch.undo()
    resumed = train(cfg)
    assert resumed["status"] == "completed"
    assert resumed["wandb"]["run_id"] == stopped["wandb"]["run_id"]  # the same W&B run continues
    assert_same_run(cfg.run_dir, reference_run)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(make_cfg):
    # Epoch 1 trains normally; from epoch 2 the lr is 1e28: the weights blow up and the loss of step 6 is NaN.
    cfg = make_cfg(*RESUME_OVERRIDES, "trainer.check_every=4", "optimizer=invadam", "scheduler=step",
                   "scheduler.milestones=[1]", "scheduler.gamma=1e30", fast=False)
    summary = train(cfg)
    assert summary["status"] == "diverged"
    assert summary["diverged_at_step"] == 6  # exact, although the flag was read only at step 8
    assert summary["epochs_completed"] == 1 and len(read_metrics(cfg.run_dir)) == 1
    saved = load_checkpoint(Path(cfg.run_dir) / CHECKPOINT_FILE)
    assert saved["train_state"]["epochs_completed"] == 1 and saved["train_state"]["in_epoch"] is None
    assert saved["scheduler"]["last_epoch"] == 4
    assert all(torch.isfinite(w).all() for w in saved["model"].values() if w.is_floating_point())
    assert train(cfg) == read_summary(cfg.run_dir)  # a diverged run is finished: a rerun skips it


def test_corrupt_checkpoint_is_reported_and_left_alone(make_cfg, monkeypatch):
    cfg = make_cfg(*RESUME_OVERRIDES, fast=False)
    signal_self_after_step(monkeypatch, 1)
    assert train(cfg)["status"] == "preempted"
    monkeypatch.undo()
    path = Path(cfg.run_dir) / CHECKPOINT_FILE
    corrupt = bytearray(path.read_bytes())
    corrupt[-20] ^= 0xFF
    path.write_bytes(bytes(corrupt))

    with pytest.raises(CorruptCheckpointError, match="SHA-256"):
        train(cfg)
    assert read_summary(cfg.run_dir)["status"] == "failed"
    assert str(path) in (Path(cfg.run_dir) / ERROR_FILE).read_text()
    assert path.read_bytes() == bytes(corrupt)  # neither loaded nor overwritten

    with open_dict(cfg):
        cfg.trainer.resume = False  # the way out the error names
    summary = train(cfg)
    assert summary["status"] == "completed" and [r[M.EPOCH] for r in read_metrics(cfg.run_dir)] == [1, 2, 3]
    assert not (Path(cfg.run_dir) / ERROR_FILE).exists()


def test_a_directory_holding_another_config_is_refused_untouched(make_cfg, monkeypatch):
    cfg = make_cfg(*RESUME_OVERRIDES, fast=False)
    signal_self_after_step(monkeypatch, 1)
    train(cfg)
    monkeypatch.undo()
    before = {p.name: p.read_bytes() for p in Path(cfg.run_dir).iterdir() if p.is_file()}

    other = make_cfg(*RESUME_OVERRIDES, "optimizer.lr=0.02", fast=False)
    with open_dict(other):
        other.run_dir = cfg.run_dir
    with pytest.raises(RunDirectoryConflict, match=r"optimizer\.lr: 0\.01 -> 0\.02"):
        train(other)
    assert {p.name: p.read_bytes() for p in Path(cfg.run_dir).iterdir() if p.is_file()} == before


def test_a_run_directory_in_use_is_refused(make_cfg):
    cfg = make_cfg()
    with RunLock(Path(cfg.run_dir)), pytest.raises(RunInProgress, match="another process"):
        train(cfg)


def preempted_run(make_cfg, monkeypatch, step: int, *overrides: str):
    """A config of ``RESUME_OVERRIDES`` and its run, stopped by SIGTERM right after optimizer step ``step``."""
    cfg = make_cfg(*RESUME_OVERRIDES, *overrides, fast=False)
    signal_self_after_step(monkeypatch, step)
    assert train(cfg)["status"] == "preempted"
    monkeypatch.undo()
    return cfg, Path(cfg.run_dir)


@pytest.mark.parametrize("damage", ["missing", "torn", "row deleted"])
def test_damaged_metrics_rows_are_rebuilt_from_the_checkpoint(make_cfg, reference_run, monkeypatch, caplog, damage):
    cfg, run_dir = preempted_run(make_cfg, monkeypatch, 10)   # epoch 3, batch 2: rows 1 and 2 written
    metrics = run_dir / METRICS_FILE
    lines = metrics.read_text().splitlines(keepends=True)
    if damage == "missing":
        metrics.unlink()
    elif damage == "torn":   # the last line cut short, as by a crash mid-append
        metrics.write_text(lines[0] + lines[1][: len(lines[1]) // 2])
    else:
        metrics.write_text(lines[1])
    assert train(cfg)["status"] == "completed"
    assert [row[M.EPOCH] for row in read_metrics(run_dir)] == [1, 2, 3]
    assert_same_run(run_dir, reference_run)
    assert "rebuilt from the checkpoint" in caplog.text


def test_a_metrics_row_that_contradicts_the_checkpoint_stops_the_run_with_a_clear_error(make_cfg, monkeypatch):
    cfg, run_dir = preempted_run(make_cfg, monkeypatch, 6)
    metrics = run_dir / METRICS_FILE
    edited = metrics.read_text().replace('"test/acc": ', '"test/acc": 1', 1)
    metrics.write_text(edited)
    with pytest.raises(RunRecordsDamaged, match="the row of epoch 1 differs from the one the checkpoint recorded"):
        train(cfg)
    assert read_summary(run_dir)["status"] == "failed"
    assert "RunRecordsDamaged" in (run_dir / ERROR_FILE).read_text()
    assert metrics.read_text() == edited   # left for a look


def test_a_torn_summary_is_rebuilt_on_resume(make_cfg, reference_run, monkeypatch):
    cfg, run_dir = preempted_run(make_cfg, monkeypatch, 6)
    summary = run_dir / SUMMARY_FILE
    summary.write_text(summary.read_text()[:40])
    assert train(cfg)["status"] == "completed"
    assert read_summary(run_dir)["status"] == "completed"
    assert_same_run(run_dir, reference_run)


def test_a_corrupt_last_checkpoint_falls_back_to_the_previous_one(make_cfg, reference_run, monkeypatch):
    cfg, run_dir = preempted_run(make_cfg, monkeypatch, 10)   # last.pt: epoch 3 batch 2; previous.pt: epoch 2
    assert load_checkpoint(run_dir / PREVIOUS_CHECKPOINT_FILE)["train_state"]["epochs_completed"] == 2
    path = run_dir / CHECKPOINT_FILE
    corrupt = bytearray(path.read_bytes())
    corrupt[30] ^= 0x01   # inside the header's digest
    path.write_bytes(bytes(corrupt))
    stale = run_dir / f".{CHECKPOINT_FILE}.{'0' * 32}.tmp"   # left by a save that a crash cut short
    stale.write_bytes(bytes(1000))

    assert train(cfg)["status"] == "completed"
    assert_same_run(run_dir, reference_run)
    assert (run_dir / f"{CHECKPOINT_FILE}.corrupt").read_bytes() == bytes(corrupt)  # kept for a look
    assert not stale.exists()


# Settings that cannot change a result: a relaunch with any of them changed is the same run.
UNRESULTFUL = ("trainer.num_workers=1", "trainer.eval_batch_size=16", "dataset.memory_budget_gb=0.5",
               "trainer.progress=true", "trainer.check_every=2", "logger.group=another_study", "logger.mode=offline",
               f"trainer.device={'cuda' if torch.cuda.is_available() else 'cpu'}",
               f"trainer.fused_optimizer={'true' if torch.cuda.is_available() else 'false'}",
               f"trainer.channels_last={'true' if torch.cuda.is_available() else 'false'}")


@pytest.mark.parametrize("override", UNRESULTFUL)
def test_a_setting_that_cannot_change_a_result_keeps_the_run_identity(override):
    base = compose_train_config(RESUME_OVERRIDES, fast=False)
    changed = compose_train_config([*RESUME_OVERRIDES, override], fast=False)
    assert config_hash(changed) == config_hash(base) and run_name(changed) == run_name(base)


def test_a_key_added_later_keeps_the_hash_of_runs_made_before_it_at_its_default():
    cfg = compose_train_config(RESUME_OVERRIDES, fast=False)
    assert cfg.trainer.eval_before_training is False
    before_the_key = compose_train_config(RESUME_OVERRIDES, fast=False)
    with open_dict(before_the_key):
        del before_the_key.trainer["eval_before_training"]
    assert config_hash(before_the_key) == config_hash(cfg)
    with open_dict(cfg):
        cfg.trainer.eval_before_training = True
    assert config_hash(cfg) != config_hash(before_the_key)   # set otherwise, it is another experiment


def test_a_relaunch_with_every_unresultful_setting_changed_resumes_the_same_run(make_cfg, reference_run, monkeypatch):
    cfg, run_dir = preempted_run(make_cfg, monkeypatch, 6)
    relaunch = make_cfg(*RESUME_OVERRIDES, *(o for o in UNRESULTFUL if not o.startswith("logger.mode")), fast=False)
    with open_dict(relaunch):
        relaunch.run_dir = str(run_dir)
    assert train(relaunch)["status"] == "completed"
    # The same training (bitwise-identical weights); another evaluation batch size sums the same per-sample
    # losses in another order, so evaluation losses may differ in float rounding, nothing else.
    assert all(torch.equal(w, final_weights(reference_run)[name]) for name, w in final_weights(run_dir).items())
    rows, expected = without_timings(read_metrics(run_dir)), without_timings(read_metrics(reference_run))
    assert [row.keys() for row in rows] == [row.keys() for row in expected]
    for row, reference in zip(rows, expected, strict=True):
        for key, value in row.items():
            assert value == (pytest.approx(reference[key], abs=1e-6) if "loss" in key else reference[key]), key


@pytest.mark.parametrize("loader", ["memory", "dataloader"])
def test_an_epoch_restarted_at_batch_k_yields_the_rest_of_the_same_epoch(loader):
    data = build_image_data({"name": "synthetic", "train_size": 96, "test_size": 32, "loader": loader},
                            batch_size=16, eval_batch_size=32, num_workers=0, seed=3)
    steps = len(data.train)
    whole = list(epoch_batches(data.train, 2, 0, steps))
    for start in (1, 4, steps):
        rest = list(epoch_batches(data.train, 2, start, steps))
        assert len(rest) == steps - start
        for (images, labels), (expected_images, expected_labels) in zip(rest, whole[start:], strict=True):
            assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
