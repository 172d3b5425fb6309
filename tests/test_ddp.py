"""DistributedDataParallel through the real entrypoint: ``torchrun --nproc_per_node=2`` on CPU (gloo) trains the
same run as one process at the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from dualadam.train import train
from dualadam.training.outputs import read_metrics
from tests.conftest import REPO, compose_train_config
from tests.runs import TIMING_KEYS, child_env, final_weights, one_thread, read_summary  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

# A ViT (layer norm, no batch norm: per-rank batch statistics would differ from the global batch's) on
# synthetic data with its crop/flip augmentation, in memory: each global batch of 32 is split into two
# contiguous halves of 16, one per rank, cropped and flipped as in the single process. 5 steps per epoch.
DDP_OVERRIDES = ("model=timm", "model.name=test_vit", "dataset=synthetic", "dataset.train_size=160",
                 "dataset.test_size=64", "trainer.epochs=2", "trainer.batch_size=32", "trainer.eval_batch_size=64",
                 "trainer.num_workers=0", "trainer.progress=false", "logger=none", "optimizer=dualadam")


# Accumulation (windows of 2, 2, 1: gradients averaged across ranks only at each window's last backward) and
# clipping (of the averaged gradients, alike on every rank) must keep the processes on the single-process run.
RECIPE = ("trainer.grad_accum_steps=2", "trainer.grad_clip_norm=0.5")


@pytest.mark.parametrize("recipe", [(), RECIPE], ids=["plain", "accumulation and clipping"])
def test_two_gloo_processes_train_the_single_process_run(tmp_path, isolated_wandb, recipe):
    ddp_dir = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "dualadam.train",
                             *DDP_OVERRIDES, *recipe, f"hydra.run.dir={ddp_dir}"], cwd=REPO, env=child_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(ddp_dir)
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert summary["effective_batch_size"] == (64 if recipe else 32)   # the global batch x accumulation
    assert summary["replicas_identical"] is True  # both ranks' weights compared bitwise at the end
    assert result.stdout.count("[dualadam] run completed") == 1  # rank 0 alone reports and writes

    cfg = compose_train_config([*DDP_OVERRIDES, *recipe], fast=False)
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "single")
    single = train(cfg)
    assert single["config_hash"] == summary["config_hash"]  # the same experiment, by identity

    ddp_rows, single_rows = read_metrics(ddp_dir), read_metrics(cfg.run_dir)
    assert len(ddp_rows) == len(single_rows) == 2
    for ours, theirs in zip(ddp_rows, single_rows, strict=True):
        for key in ours.keys() - set(TIMING_KEYS):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key
    ddp_weights, single_weights = final_weights(ddp_dir), final_weights(cfg.run_dir)
    for name, weight in single_weights.items():
        torch.testing.assert_close(ddp_weights[name], weight, rtol=1e-4, atol=1e-5)


def test_a_global_batch_that_does_not_divide_among_processes_is_refused():
    from dualadam.training.distributed import per_rank_config
    from dualadam.training.runtime import Runtime

    cfg = OmegaConf.create({"trainer": {"batch_size": 30}})
    runtime = Runtime(torch.device("cpu"), "32", False, False, rank=1, world_size=4)
    with pytest.raises(ValueError, match=r"trainer\.batch_size=30 .* multiple of 4"):
        per_rank_config(cfg, runtime)
    assert per_rank_config(OmegaConf.create({"trainer": {"batch_size": 32}}), runtime).trainer.batch_size == 8


@pytest.mark.slow
def test_a_submitit_job_with_two_tasks_trains_with_ddp(tmp_path, isolated_wandb):
    """The SLURM path for several GPUs per run (``cluster.tasks_per_node``), here with submitit's local
    executor: each task finds its rank in submitit's job environment and joins the process group."""
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run([sys.executable, "-m", "dualadam.train", "-m", *DDP_OVERRIDES,
                             "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                             f"hydra.sweep.dir={sweep_dir}"], cwd=REPO, env=child_env(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (summary_path,) = sweep_dir.glob("*/summary.json")
    summary = read_summary(summary_path.parent)
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["replicas_identical"]
