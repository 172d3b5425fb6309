"""Sweeps through the real launchers: a relaunched multirun does only the missing work, submitit_local runs a
2-job sweep and requeues a preempted job, the SLURM launcher config takes the site settings, and the W&B sweep
spec drives the same entrypoint."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from dualadam.train import train
from dualadam.training.checkpoint import load_checkpoint
from dualadam.training.outputs import ERROR_FILE, METRICS_FILE, SUMMARY_FILE, read_metrics
from dualadam.training.run_directory import CHECKPOINT_FILE, register_resolvers, run_name
from tests.conftest import CONFIG_DIR, FAST_OVERRIDES, REPO, compose_train_config
from tests.fault_injection import fault_overrides, stricter_validation_overrides
from tests.runs import assert_same_run, child_env, one_thread, read_summary  # noqa: F401  (one_thread: fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

# 128 training images in batches of 32: 4 steps per epoch; step 6 is mid epoch 2.
SWEEP_OVERRIDES = (*FAST_OVERRIDES, "dataset=synthetic", "dataset.train_size=128", "dataset.test_size=64",
                   "trainer.epochs=2", "trainer.check_every=3")


def run_dir_in(sweep_dir: Path, *overrides: str) -> Path:
    """Where a sweep job with ``overrides`` trains: ``<sweep dir>/<run_name>`` (configs/train.yaml)."""
    return sweep_dir / run_name(compose_train_config([*SWEEP_OVERRIDES, *overrides], fast=False))


def launch_sweep(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dualadam.train", "-m", *SWEEP_OVERRIDES, *overrides],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)


def uninterrupted(tmp_path: Path, *overrides: str) -> Path:
    """The same run as a sweep job, trained in this process without interruption."""
    cfg = compose_train_config([*SWEEP_OVERRIDES, *overrides], fast=False)
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "uninterrupted")
    assert train(cfg)["status"] == "completed"
    return Path(cfg.run_dir)


def our_files(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    return {name: ((run_dir / name).stat().st_mtime_ns, (run_dir / name).read_bytes())
            for name in (SUMMARY_FILE, METRICS_FILE, CHECKPOINT_FILE)}


def test_relaunched_sweep_skips_finished_resumes_interrupted_and_retries_failed(tmp_path, isolated_wandb):
    sweep_dir = tmp_path / "sweep"
    runs = {seed: run_dir_in(sweep_dir, f"seed={seed}") for seed in (0, 1, 2)}
    runs[0].mkdir(parents=True)
    (runs[0] / CHECKPOINT_FILE).write_bytes(os.urandom(512))  # seed 0 will fail: a garbled checkpoint

    # The first launch: seed 0 fails, seed 1 completes, seed 2 is SIGKILLed (with the whole sweep) at step 6.
    first = launch_sweep("seed=0,1,2", f"hydra.sweep.dir={sweep_dir}", *fault_overrides("SIGKILL", 6, seed=2))
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert read_summary(runs[0])["status"] == "failed"
    assert "not a dualadam checkpoint" in (runs[0] / ERROR_FILE).read_text()
    assert read_summary(runs[1])["status"] == "completed"  # the sweep went on after the failure
    assert read_summary(runs[2])["status"] == "running"
    assert load_checkpoint(runs[2] / CHECKPOINT_FILE)["train_state"]["epochs_completed"] == 1

    (runs[0] / CHECKPOINT_FILE).unlink()  # the operator removes the cause of the failure
    finished = our_files(runs[1])
    second = launch_sweep("seed=0,1,2", f"hydra.sweep.dir={sweep_dir}")
    assert second.returncode == 0, second.stderr[-3000:]

    assert read_summary(runs[0])["status"] == "completed" and len(read_metrics(runs[0])) == 2  # retried
    assert not (runs[0] / ERROR_FILE).exists()
    assert our_files(runs[1]) == finished  # skipped: not a byte or a timestamp changed
    assert f"run already completed; skipped. Outputs in {runs[1]}" in second.stdout
    assert "Resuming from the end of epoch 1" in (runs[2] / "train.log").read_text()
    assert_same_run(runs[2], uninterrupted(tmp_path, "seed=2"))


def test_a_relaunch_that_fails_validation_changes_no_finished_run(tmp_path, isolated_wandb):
    """A finished sweep relaunched by a release whose validation is stricter: every job is rejected. The
    finished runs keep every byte of their records; a job whose directory is new still records its failure."""
    sweep_dir = tmp_path / "sweep"
    runs = {seed: run_dir_in(sweep_dir, f"seed={seed}") for seed in (0, 1, 2)}
    first = launch_sweep("seed=0,1", f"hydra.sweep.dir={sweep_dir}")
    assert first.returncode == 0, first.stderr[-3000:]
    finished = {seed: our_files(runs[seed]) for seed in (0, 1)}

    again = launch_sweep("seed=0,1,2", f"hydra.sweep.dir={sweep_dir}",
                         *stricter_validation_overrides("trainer.batch_size"))
    assert again.returncode == 0, again.stderr[-3000:]
    for seed in (0, 1):
        assert our_files(runs[seed]) == finished[seed]
        assert read_summary(runs[seed])["status"] == "completed"
        assert not (runs[seed] / ERROR_FILE).exists()
        assert f"{runs[seed]} holds an earlier run's records; they are left as they are" in again.stdout + again.stderr
    assert read_summary(runs[2])["status"] == "failed"   # a new directory: the job's fate is recorded there
    assert "rejected by a stricter validation" in (runs[2] / ERROR_FILE).read_text()


def test_submitit_local_runs_two_jobs_and_requeues_a_preempted_one(tmp_path, isolated_wandb):
    """Job seed=1 gets submitit's own preemption signal (SIGUSR2) mid epoch 2: the trainer checkpoints that
    step, then hands the signal to submitit, which requeues the job; the requeued job resumes and ends exactly
    as an uninterrupted run."""
    sweep_dir = tmp_path / "sweep"
    result = launch_sweep("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "seed=0,1",
                          f"hydra.sweep.dir={sweep_dir}", *fault_overrides("SIGUSR2", 6, seed=1))
    assert result.returncode == 0, result.stderr[-3000:]
    for seed in (0, 1):
        assert read_summary(run_dir_in(sweep_dir, f"seed={seed}"))["status"] == "completed"

    preempted = run_dir_in(sweep_dir, "seed=1")
    log = (preempted / "train.log").read_text()
    assert "Checkpoint saved (epoch 2, batch 2)" in log and "Resuming from epoch 2, batch 2" in log
    submitit_logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in submitit_logs
    assert_same_run(preempted, uninterrupted(tmp_path, "seed=1"))


def test_slurm_launcher_takes_partition_gpus_time_and_requeues_from_the_site_config():
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm", "local=example"],
                      return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)  # the plugin's own SlurmLauncher, as a -m run builds it
    assert type(launcher).__name__ == "SlurmLauncher"
    site = yaml.safe_load((CONFIG_DIR / "local" / "example.yaml").read_text())["cluster"]
    params = launcher.params
    assert params["partition"] == site["partition"] and params["account"] == site["account"]
    assert params["gpus_per_node"] == site["gpus_per_node"] and params["timeout_min"] == site["timeout_min"]
    assert params["max_num_timeout"] == site["max_requeues"] > 0 and params["signal_delay_s"] > 0
    assert params["submitit_folder"].startswith(str(cfg.hydra.sweep.dir))
    assert cfg.dataset.root == yaml.safe_load((CONFIG_DIR / "local" / "example.yaml").read_text())["dataset"]["root"]


def test_wandb_sweep_spec_runs_the_hydra_entrypoint_with_valid_overrides():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args, load_sweep_config

    spec = load_sweep_config(str(REPO / "experiments" / "wandb_sweep.yaml"))
    assert spec["command"][-1] == "${args_no_hyphens}" and "dualadam.train" in spec["command"]
    names = list(spec["parameters"])
    grid = list(itertools.product(*(spec["parameters"][name]["values"] for name in names)))
    assert len(grid) > 1
    register_resolvers()
    for values in grid:
        # What `wandb agent` puts in place of ${args_no_hyphens}: Hydra's key=value overrides.
        args = create_sweep_command_args({"args": {n: {"value": v} for n, v in zip(names, values)}})
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=args["args_no_hyphens"], return_hydra_config=True)
        for name, value in zip(names, values):
            chosen = cfg.hydra.runtime.choices.get(name, OmegaConf.select(cfg, name))  # a group, or a key
            assert chosen == value, (name, value)
