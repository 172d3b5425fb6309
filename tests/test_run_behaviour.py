"""How a run behaves around its training (issue 13): a blown-up update ends ``diverged`` with no checkpoint of it,
a preemption signal stops a long evaluation, a SIGKILLed run leaves no lock behind, a failed W&B start falls
back quickly, and a run and a multirun say what they measured. Real runs, real signals, real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dualadam.tasks.image.task import ImageClassification
from dualadam.train import train
from dualadam.training.outputs import read_metrics
from dualadam.training.run_directory import CHECKPOINT_FILE, RunInProgress, RunLock
from dualadam.training.wandb_logger import WandbLogger
from tests.conftest import CONFIG_DIR, FAST_OVERRIDES, SMALL_SYNTHETIC
from tests.runs import assert_same_run, child_env, one_thread, read_summary, wandb_records, wandb_summary  # noqa: F401
from tests.test_resume import RESUME_OVERRIDES

# One optimizer step per epoch (32 images, batch 32); SGD at lr 1e30 turns finite weights into ~1e30 ones, so
# the step's training loss is finite and only the weights and the evaluation show the divergence.
EXPLODING = ("optimizer=sgd", "optimizer.lr=1e30", "dataset.train_size=32")


def test_an_update_that_blows_up_the_weights_ends_diverged_without_a_checkpoint(make_cfg):
    cfg = make_cfg(*EXPLODING, "logger.mode=offline")
    summary = train(cfg)
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 1
    assert "test/loss" in summary["diverged"] and summary["epochs_completed"] == 0
    assert not (Path(cfg.run_dir) / CHECKPOINT_FILE).exists()   # the exploded weights were never saved
    assert read_summary(cfg.run_dir)["status"] == "diverged"
    assert wandb_summary(wandb_records(Path(cfg.run_dir)))["status"] == "diverged"
    assert train(cfg) == read_summary(cfg.run_dir)   # a relaunch (a sweep's) skips it as finished


def test_a_later_epochs_blow_up_keeps_the_last_good_checkpoint(make_cfg):
    """Epoch 1 trains at a sane lr; the step scheduler then multiplies it by 1e32 for epoch 2's one step."""
    cfg = make_cfg(*EXPLODING, "optimizer.lr=0.01", "trainer.epochs=2", "scheduler=step",
                   "scheduler.milestones=[1]", "scheduler.gamma=1e32")
    summary = train(cfg)
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 2
    assert summary["epochs_completed"] == 1 and len(read_metrics(cfg.run_dir)) == 1
    assert summary["final"] == read_metrics(cfg.run_dir)[0]
    from dualadam.training.checkpoint import load_checkpoint
    saved = load_checkpoint(Path(cfg.run_dir) / CHECKPOINT_FILE)
    assert saved["train_state"]["epochs_completed"] == 1
    assert all(tensor.isfinite().all() for tensor in saved["model"].values() if tensor.is_floating_point())


def sigterm_during_evaluation(monkeypatch, evaluation: int, after_batches: int) -> list[int]:
    """Make evaluation number ``evaluation`` (1-based; two per epoch: train_eval, test) send this process a
    real SIGTERM after ``after_batches`` batches. Returns a list that gets the number of batches evaluated
    after the signal, when the evaluation ends or stops."""
    original, calls, after_signal = ImageClassification.evaluate, [0], []

    def evaluate(self, model, loader):
        calls[0] += 1
        if calls[0] != evaluation:
            return original(self, model, loader)

        def batches():
            drawn = 0
            try:
                for index, batch in enumerate(loader):
                    if index == after_batches:
                        os.kill(os.getpid(), signal.SIGTERM)
                    drawn += index >= after_batches
                    yield batch
            finally:
                after_signal.append(drawn)

        return original(self, model, batches())

    monkeypatch.setattr(ImageClassification, "evaluate", evaluate)
    return after_signal


@pytest.mark.usefixtures("one_thread")
def test_sigterm_during_evaluation_stops_it_and_the_resumed_run_matches(make_cfg, monkeypatch):
    overrides = (*RESUME_OVERRIDES, "trainer.eval_batch_size=8")   # 8 batches per evaluation
    reference = make_cfg(*overrides, fast=False)
    assert train(reference)["status"] == "completed"

    cfg = make_cfg(*overrides, fast=False)
    after_signal = sigterm_during_evaluation(monkeypatch, evaluation=3, after_batches=2)  # epoch 2's train_eval
    summary = train(cfg)
    assert summary["status"] == "preempted" and summary["preempted"]["step"] == 8   # epoch 2 trained in full
    assert after_signal == [1]   # the batch in hand when the signal came, then nothing
    assert len(read_metrics(cfg.run_dir)) == 1
    monkeypatch.undo()
    assert train(cfg)["status"] == "completed"   # evaluates epoch 2 again, then trains epoch 3
    assert_same_run(cfg.run_dir, reference.run_dir)


KILLED_CHILD = """
import os, signal
from omegaconf import open_dict
from dualadam.train import train
from dualadam.training.trainer import Trainer
from tests.conftest import compose_train_config

step = Trainer.optimizer_step
def step_then_kill(self, loss):
    step(self, loss)
    if self.scheduler.last_epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)
Trainer.optimizer_step = step_then_kill
cfg = compose_train_config(["dataset.loader=dataloader", "trainer.num_workers=2", "trainer.epochs=2"])
with open_dict(cfg):
    cfg.run_dir = {run_dir!r}
train(cfg)
"""


def test_a_sigkilled_runs_lock_is_free_within_a_second_despite_its_loader_workers(tmp_path):
    """The killed process's DataLoader workers outlive it by up to 5 s (their watchdog's interval), so the run's
    lock must not be theirs. Output goes to a file: a pipe would make us wait for the workers too."""
    run_dir, output = tmp_path / "killed", tmp_path / "child.log"
    with output.open("w") as sink:
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_CHILD.format(run_dir=str(run_dir)))],
                                 env=child_env(), stdout=sink, stderr=subprocess.STDOUT)
        assert child.wait(timeout=300) == -signal.SIGKILL, output.read_text()[-3000:]
    deadline = time.monotonic() + 1.0
    while True:
        try:
            with RunLock(run_dir):
                break
        except RunInProgress:
            assert time.monotonic() < deadline, "the killed run's DataLoader workers still hold its lock"
            time.sleep(0.05)


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    with RunLock(tmp_path), pytest.raises(RunInProgress, match="this very process"):
        with RunLock(tmp_path):
            pass
    with RunLock(tmp_path):   # released: free again
        pass


def test_an_unreachable_wandb_server_falls_back_to_offline_within_the_default_bound(tmp_path, isolated_wandb,
                                                                                    monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")   # the discard port: nothing answers
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    logger_cfg = OmegaConf.load(CONFIG_DIR / "logger" / "wandb.yaml")
    logger_cfg.mode, logger_cfg.console = "online", "off"
    assert logger_cfg.init_timeout <= 15
    began = time.monotonic()
    wandb = WandbLogger(logger_cfg, tmp_path, config={})
    wandb.start()
    try:
        assert wandb.mode == "offline" and wandb.run is not None
        assert time.monotonic() - began < logger_cfg.init_timeout
    finally:
        wandb.finish()


# One epoch's line (``progress_log.describe_row``), as in train.log and on the console.
EPOCH_LINE = (r"epoch {epoch}/2 \| train loss \d+\.\d+ acc \d+\.\d+% \| test loss \d+\.\d+ acc \d+\.\d+% \| "
              r"gap -?\d+\.\d+ pp \| lr \d\.\d+e[-+]\d+ \| alpha \d\.\d+ \| \d+\.\d s")


def test_a_multirun_ends_with_a_table_of_its_jobs(tmp_path, isolated_wandb):
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run([sys.executable, "-m", "dualadam.train", "-m", *FAST_OVERRIDES, *SMALL_SYNTHETIC,
                             "optimizer.lr=0.01,-1", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path,
                            env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout[result.stdout.index("[dualadam] multirun: 2 jobs"):].splitlines()
    jobs = [line for line in table[2:] if line.strip()]
    assert len(jobs) == 2, table
    assert jobs[0].split()[:2] == ["completed", "1/1"] and "test/acc" in jobs[0]
    assert jobs[1].split()[0] in ("failed", "no")   # a bad config: failed, or no summary written
    for line in jobs:
        assert (sweep_dir / line.split()[-1]).is_dir()
    assert not list(sweep_dir.glob(".multirun-*"))
