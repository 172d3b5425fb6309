"""End-to-end runs of ``train(cfg)``: every optimizer, W&B read back from its own files, the CLI, failures,
and a real CIFAR-10 subset that must learn."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dualadam.train import train
from dualadam.training import metrics as M
from dualadam.training.outputs import ERROR_FILE, SUMMARY_FILE, read_metrics
from dualadam.training.validation import ConfigError
from tests.conftest import CONFIG_DIR, FAST_OVERRIDES, SMALL_SYNTHETIC
from tests.runs import wandb_records, wandb_summary
from tests.test_run_behaviour import EPOCH_LINE

OPTIMIZERS = sorted(path.stem for path in (CONFIG_DIR / "optimizer").glob("*.yaml"))


def read_summary(run_dir) -> dict:
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())


def assert_complete_row(row: dict) -> None:
    assert list(row) == list(M.EPOCH_METRIC_KEYS)
    assert all(isinstance(value, int | float) and math.isfinite(value) for value in row.values()), row
    assert row[M.GAP_ACC] == pytest.approx(row[M.TRAIN_EVAL_ACC] - row[M.TEST_ACC])
    assert row[M.GAP_LOSS] == pytest.approx(row[M.TEST_LOSS] - row[M.TRAIN_EVAL_LOSS])
    for key in (M.TRAIN_ACC, M.TRAIN_EVAL_ACC, M.TEST_ACC):
        assert 0.0 <= row[key] <= 100.0


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_one_epoch_with_each_optimizer_writes_every_metric(make_cfg, optimizer):
    cfg = make_cfg(f"optimizer={optimizer}")
    summary = train(cfg)

    rows = read_metrics(cfg.run_dir)
    assert len(rows) == 1 and rows[0][M.EPOCH] == 1
    assert_complete_row(rows[0])
    assert rows[0][M.THROUGHPUT] > 0 and rows[0][M.OPTIMIZER_STEPS] == 8  # 256 synthetic images / batch 32
    on_disk = read_summary(cfg.run_dir)
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["status"] == "completed" and on_disk["epochs_completed"] == 1
    assert on_disk["final"] == rows[0] and on_disk["best"] == rows[0]

    alpha = rows[0][M.INVERSE_ADAM_RATE]
    if optimizer == "dualadam":
        assert alpha == pytest.approx(1 - 8 * 8e-5)  # alpha after 8 steps of the linear blend
    elif optimizer == "invadam":
        assert alpha == 1.0
    else:
        assert alpha == 0.0
    if optimizer == "adam_matched_warmup":  # the 8th of 12,500 warmup steps
        assert rows[0][M.LR] == pytest.approx(cfg.optimizer.lr * 8 / 12_500)


def test_summary_records_identity_versions_and_hardware(make_cfg):
    cfg = make_cfg("trainer.epochs=2", "scheduler=cosine_epoch")
    summary = train(cfg)
    rows = read_metrics(cfg.run_dir)
    assert [row[M.EPOCH] for row in rows] == [1, 2]
    assert rows[1][M.LR] < rows[0][M.LR]  # per-epoch cosine
    best = max(rows, key=lambda row: row[M.TEST_ACC])
    assert summary["best"] == best and summary["final"] == rows[-1]
    assert len(summary["config_hash"]) == 64
    assert summary["git"] is None or len(summary["git"]["commit"]) == 40
    assert {"python", "torch", "timm", "dualadam"} <= set(summary["versions"])
    assert summary["versions"]["torch"] is not None
    assert summary["hardware"]["cpu_count"] >= 1 and summary["precision"] == "32"


RUNTIME_OPTIONS = ["trainer.precision=bf16", "trainer.precision=fp16", "trainer.channels_last=true"]


@pytest.mark.parametrize("option", RUNTIME_OPTIONS)
def test_mixed_precision_and_channels_last_run(make_cfg, option):
    # Half-precision convolutions are slow on CPU: a smaller set keeps this quick.
    cfg = make_cfg(option, "dataset.train_size=64", "dataset.test_size=64")
    summary = train(cfg)
    assert summary["status"] == "completed"
    if "precision" in option:
        assert summary["precision"] == option.split("=")[1]
    assert_complete_row(read_metrics(cfg.run_dir)[0])


@pytest.mark.slow
def test_compiled_model_trains(make_cfg):
    cfg = make_cfg("trainer.compile=true", "dataset.train_size=64", "dataset.test_size=64")
    assert train(cfg)["status"] == "completed"
    assert_complete_row(read_metrics(cfg.run_dir)[0])


def test_wandb_offline_run_records_every_epoch_in_its_own_files(make_cfg):
    cfg = make_cfg("trainer.epochs=2", "logger.mode=offline", "logger.tags=[test]", "logger.group=ci")
    summary = train(cfg)
    assert summary["wandb"]["mode"] == "offline" and summary["wandb"]["run_id"]

    records = wandb_records(Path(cfg.run_dir))
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    rows = read_metrics(cfg.run_dir)
    assert len(history) == len(rows) == 2
    for item, row in zip(history, rows, strict=True):
        for key in M.EPOCH_METRIC_KEYS:
            assert item[key] == pytest.approx(row[key], rel=1e-12, abs=1e-12), key
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["run_id"] == summary["wandb"]["run_id"]
    assert run["config"]["update"]["optimizer"]["name"] == "dualadam"
    summaries = wandb_summary(records)
    assert summaries[f"best/{M.TEST_ACC}"] == pytest.approx(summary["best"][M.TEST_ACC])
    (exit_record,) = [r["exit"] for r in records if r["type"] == "exit"]
    assert exit_record.get("exit_code", 0) == 0


def test_wandb_failure_never_stops_training(make_cfg, monkeypatch):
    # An online start with a key but an unreachable server fails; the run falls back and completes.
    cfg = make_cfg("logger.mode=online", "logger.init_timeout=5")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing answers
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["wandb"]["mode"] == "offline"
    assert_complete_row(read_metrics(cfg.run_dir)[0])
    assert [r["type"] for r in wandb_records(Path(cfg.run_dir))].count("history") == 1


def test_bad_input_fails_before_any_training(make_cfg):
    cfg = make_cfg("trainer.batch_size=0")
    with pytest.raises(ConfigError, match=r"trainer\.batch_size"):
        train(cfg)
    assert not Path(cfg.run_dir).exists()


def test_failed_run_leaves_traceback_and_failed_summary(make_cfg, tmp_path):
    cfg = make_cfg("dataset=cifar10", f"dataset.root={tmp_path / 'empty'}", "dataset.download=false")
    with pytest.raises(Exception, match="cifar10"):
        train(cfg)
    summary = read_summary(cfg.run_dir)
    assert summary["status"] == "failed" and summary["epochs_completed"] == 0
    assert "Traceback" in (Path(cfg.run_dir) / ERROR_FILE).read_text()


def test_console_script_runs_with_overrides(tmp_path, isolated_wandb):
    """``dualadam-train`` (the installed console script, i.e. ``dualadam.train:main``) from another folder."""
    run_dir = tmp_path / "cli-run"
    overrides = [*FAST_OVERRIDES, *SMALL_SYNTHETIC, "optimizer=adam", "trainer.epochs=2", f"hydra.run.dir={run_dir}"]
    script = Path(sys.executable).with_name("dualadam-train")
    result = subprocess.run([str(script), *overrides], cwd=tmp_path, env={**os.environ, "CI": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"outputs in {run_dir}" in result.stdout
    assert len(read_metrics(run_dir)) == 2 and read_summary(run_dir)["status"] == "completed"
    for said in ((run_dir / "train.log").read_text(), result.stdout):   # what SLURM and nohup users see
        for epoch in (1, 2):
            assert len(re.findall(r"- " + EPOCH_LINE.format(epoch=epoch), said)) == 1, said
        assert re.search(r"final: " + EPOCH_LINE.format(epoch=2), said)
        assert re.search(r"best by test/acc: " + EPOCH_LINE.format(epoch=r"\d"), said)
    assert "wandb:" not in result.stdout + result.stderr
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.optimizer.name == "adam" and saved.trainer.epochs == 2
    assert "trainer.epochs=2" in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")


def test_module_entrypoint_rejects_a_bad_override_naming_the_key(tmp_path, isolated_wandb):
    """``python -m dualadam.train`` with a negative lr stops before training, saying which key is wrong."""
    result = subprocess.run([sys.executable, "-m", "dualadam.train", *FAST_OVERRIDES, *SMALL_SYNTHETIC, "optimizer.lr=-1",
                             f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert "optimizer.lr=-1" in result.stderr and "learning rate > 0" in result.stderr
    assert result.stderr.startswith("Config error: ") and "Traceback" not in result.stderr   # the message alone
    assert not (tmp_path / "bad" / SUMMARY_FILE).exists()


def test_entrypoint_reads_the_configs_dualadam_config_dir_names(tmp_path):
    """A regular (non-editable) install has no configs/ beside the package: DUALADAM_CONFIG_DIR names them."""
    configs = tmp_path / "my-configs"
    shutil.copytree(CONFIG_DIR, configs)
    trainer_cfg = configs / "trainer" / "default.yaml"
    trainer_cfg.write_text(trainer_cfg.read_text().replace("epochs: 200", "epochs: 7"))
    command = [sys.executable, "-m", "dualadam.train", "--cfg", "job"]
    shown = subprocess.run(command, cwd=tmp_path, env={**os.environ, "DUALADAM_CONFIG_DIR": str(configs)},
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert OmegaConf.create(shown.stdout).trainer.epochs == 7

    missing = subprocess.run(command, cwd=tmp_path, env={**os.environ, "DUALADAM_CONFIG_DIR": str(tmp_path)},
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0
    assert "No training configs (train.yaml)" in missing.stderr and "DUALADAM_CONFIG_DIR" in missing.stderr


def test_real_cifar10_subset_learns(make_cfg, cifar10_subset_root):
    """The real data path (JPEG files, ImageFolder layout), augmentation and normalization, end to end:
    6,000 training images, 2 epochs of a small CNN, tested on 2,000 real test images. It reaches about 38%."""
    cfg = make_cfg("dataset=cifar10", f"dataset.root={cifar10_subset_root}", "dataset.download=false",
                   "optimizer=adam", "optimizer.lr=2e-3", "scheduler=constant", "trainer.epochs=2",
                   "trainer.batch_size=64", "trainer.eval_batch_size=500")
    summary = train(cfg)
    rows = read_metrics(cfg.run_dir)
    assert summary["status"] == "completed" and len(rows) == 2
    assert rows[-1][M.TEST_ACC] > 30.0, rows  # chance is 10%
    assert rows[-1][M.TRAIN_LOSS] < rows[0][M.TRAIN_LOSS]
