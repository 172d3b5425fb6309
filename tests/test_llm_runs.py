"""LLM fine-tuning through the one entrypoint (``train(cfg)`` on ``debug=llm_smoke``: a tiny random Llama): it
composes and trains, logs every metric key to the local files and to W&B, and a run stopped mid-epoch resumes
to exactly the uninterrupted result, with LoRA checkpoints that hold only the adapters."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import open_dict

from dualadam.train import train
from dualadam.training import metrics as M
from dualadam.training.checkpoint import load_checkpoint
from dualadam.training.outputs import read_metrics
from dualadam.training.run_directory import CHECKPOINT_FILE
from tests.conftest import compose_train_config
from tests.runs import assert_same_run, one_thread, wandb_records, wandb_summary  # noqa: F401  (one_thread: fixture)
from tests.test_resume import signal_self_after_step

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
for module in ("transformers", "peft"):
    pytest.importorskip(module, reason="needs the llm extra: pip install 'dualadam[llm]'")

# 64 problems in batches of 16: 4 steps per epoch. The task's extras follow the contract's keys.
SMOKE = ("debug=llm_smoke", "logger.console=off")
EXTRA_KEYS = tuple(f"{split}/{key}" for split in ("train_eval", "test") for key in ("perplexity", "sequence_acc"))


def test_llm_smoke_run_logs_every_metric_key_locally_and_to_wandb(make_cfg):
    cfg = make_cfg(*SMOKE, "trainer.epochs=2", "logger=wandb", "logger.mode=offline", "logger.console=off",
                   "trainer.eval_before_training=true", fast=False)
    summary = train(cfg)
    assert summary["status"] == "completed"
    before = summary["initial"]   # the model before its first step, as a pretrained model before fine-tuning
    assert sorted(before) == sorted(f"{split}/{key}" for split in ("train_eval", "test")
                                    for key in ("loss", "acc", "perplexity", "sequence_acc"))

    rows = read_metrics(cfg.run_dir)
    assert len(rows) == 2
    for row in rows:
        assert list(row) == [*M.EPOCH_METRIC_KEYS, *EXTRA_KEYS]
        assert all(math.isfinite(value) for value in row.values())
        assert row["test/perplexity"] == pytest.approx(math.exp(row["test/loss"]))
        assert row[M.GAP_LOSS] == pytest.approx(row["test/loss"] - row["train_eval/loss"])
    assert rows[1]["optim/steps"] == 8
    assert 0 < rows[1][M.INVERSE_ADAM_RATE] < 1   # DualAdam mid-blend (switch_rate 8e-5)
    assert rows[1]["train/loss"] < rows[0]["train/loss"]
    assert rows[1]["test/loss"] < before["test/loss"]

    records = wandb_records(Path(cfg.run_dir))
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert len(history) == 2
    for item, row in zip(history, rows, strict=True):
        for key, value in row.items():
            assert item[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    summary_in_wandb = wandb_summary(records)
    for key, value in before.items():
        assert summary_in_wandb[f"initial/{key}"] == pytest.approx(value, rel=1e-12, abs=1e-12), key


# LoRA with dropout (an RNG draw at every step) and DualAdam mid-blend: a resume that lost an RNG state, the
# adapters, the optimizer's moments or its step count would show in the metrics or the weights.
LORA_RESUME = (*SMOKE, "finetune=lora", "finetune.lora.r=4", "finetune.lora.dropout=0.1", "trainer.epochs=2",
               "switch_rate=0.1", "optimizer.lr=1e-2")


@pytest.fixture(scope="module")
def lora_reference(tmp_path_factory, one_thread) -> Path:  # noqa: F811  (a fixture)
    """The uninterrupted LoRA run every stopped one must reproduce."""
    cfg = compose_train_config((*LORA_RESUME, "logger.mode=disabled"), fast=False)
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path_factory.mktemp("llm_reference"))
    assert train(cfg)["status"] == "completed"
    return Path(cfg.run_dir)


def test_llm_run_stopped_mid_epoch_resumes_exactly_from_an_adapter_only_checkpoint(make_cfg, lora_reference,
                                                                                    monkeypatch):
    cfg = make_cfg(*LORA_RESUME, "logger.mode=disabled", fast=False)
    signal_self_after_step(monkeypatch, 6)   # the 2nd of epoch 2's 4 steps
    stopped = train(cfg)
    assert stopped["status"] == "preempted" and stopped["preempted"]["step"] == 6
    saved = load_checkpoint(Path(cfg.run_dir) / CHECKPOINT_FILE)
    assert saved["train_state"]["in_epoch"]["batches"] == 2
    assert saved["model"] and all("lora_" in name for name in saved["model"])  # the frozen base is not saved

    monkeypatch.undo()
    assert train(cfg)["status"] == "completed"
    assert_same_run(cfg.run_dir, lora_reference)
    rows = read_metrics(cfg.run_dir)
    assert rows[-1][M.INVERSE_ADAM_RATE] == pytest.approx(1 - 8 * 0.1)
