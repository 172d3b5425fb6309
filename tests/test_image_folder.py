"""``dataset=image_folder``: a user's own ImageFolder tree, with its settings measured from the images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from dualadam.tasks import validate_config
from dualadam.tasks.image.data import NORMALIZATIONS, build_image_data
from dualadam.tasks.image.data.image_folder import STATS_SAMPLE, held_out_test, resolve_image_folder
from dualadam.train import train
from dualadam.training.outputs import read_metrics
from dualadam.training.run_directory import run_name
from dualadam.training.validation import ConfigError
from tests.conftest import CONFIG_DIR, compose_train_config
from tests.runs import without_timings

CLASSES = ("daisy", "rose", "tulip")


def write_tree(root: Path, splits=("train",), per_class: int = 12, size=20, seed: int = 0) -> Path:
    """``root/<split>/<class>/<i>.png``: noisy images whose mean colour depends on the class. ``size``: a side,
    or a function of the image's index giving (width, height)."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for k, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                width, height = size(i) if callable(size) else (size, size)
                pixels = np.clip(rng.normal(60 + 70 * k, 40, (height, width, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.png")
    return root


def folder_cfg(path: Path, **overrides):
    cfg = OmegaConf.load(CONFIG_DIR / "dataset" / "image_folder.yaml")
    return OmegaConf.merge(cfg, {"path": str(path), **overrides})


def build(cfg, batch_size: int = 8, seed: int = 0):
    return build_image_data(cfg, batch_size=batch_size, eval_batch_size=batch_size, num_workers=0, seed=seed)


# --- splits ---------------------------------------------------------------------------------------------


def test_a_train_only_tree_holds_out_a_seeded_stratified_test_set(tmp_path):
    root = write_tree(tmp_path / "flowers")
    data = build(folder_cfg(root, loader="dataloader"))
    train_set, test_set = data.train.loader.dataset.source, data.test.dataset.source
    assert np.bincount(test_set.labels).tolist() == [2, 2, 2]      # round(0.2 * 12) of each class
    assert np.bincount(train_set.labels).tolist() == [10, 10, 10]
    assert not set(train_set.paths) & set(test_set.paths)
    assert data.info.num_classes == 3 and data.info.name == "flowers"
    labels = np.repeat(np.arange(3), 12)
    assert np.array_equal(held_out_test(labels, 0.2, 0), held_out_test(labels, 0.2, 0))
    assert not np.array_equal(held_out_test(labels, 0.2, 0), held_out_test(labels, 0.2, 1))


@pytest.mark.parametrize("splits, evaluated", [(("train", "test"), "test"), (("train", "val"), "val"),
                                               (("train", "val", "test"), "test")])
def test_a_test_or_val_folder_is_the_evaluation_set(tmp_path, splits, evaluated):
    root = write_tree(tmp_path / "tree", splits, per_class=4)
    data = build(folder_cfg(root, loader="dataloader"))
    test_set = data.test.dataset.source
    assert {Path(p).parts[-3] for p in test_set.paths} == {evaluated} and len(test_set) == 12
    assert len(data.train.loader.dataset.source) == 12   # all of train/


def test_val_size_holds_a_class_balanced_validation_split_out_of_the_training_images(tmp_path):
    root = write_tree(tmp_path / "flowers")
    data = build(folder_cfg(root, val_size=6))
    val_labels = torch.cat([labels for _, labels in data.val])
    assert np.bincount(val_labels.numpy()).tolist() == [2, 2, 2]
    assert len(data.train.labels) == 36 - 6 - 6     # minus the test hold-out and the validation split


# --- measured settings ----------------------------------------------------------------------------------


def test_classes_size_and_normalization_are_measured_from_the_training_images(tmp_path):
    root = write_tree(tmp_path / "flowers", ("train", "test"), per_class=5)
    data = build(folder_cfg(root))
    assert data.info.image_size == 20 and data.info.num_classes == 3
    pixels = np.stack([np.array(Image.open(p)) for p in sorted((root / "train").rglob("*.png"))])
    pixels = pixels.reshape(-1, 3) / 255.0     # all 15 < STATS_SAMPLE images are measured
    assert 15 < STATS_SAMPLE
    assert np.allclose(data.info.mean, pixels.mean(0), atol=1e-4)
    assert np.allclose(data.info.std, pixels.std(0), atol=1e-4)
    (stats,) = (root / ".cache").glob("stats-*.json")
    assert json.loads(stats.read_text())["mean"] == list(data.info.mean)


def test_measurements_are_cached_next_to_the_data(tmp_path):
    root = write_tree(tmp_path / "flowers", ("train", "test"), per_class=4)
    build(folder_cfg(root))
    (stats,) = (root / ".cache").glob("stats-*.json")
    stats.write_text(json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}))  # read back, not redone
    assert build(folder_cfg(root)).info.mean == (0.5, 0.5, 0.5)


def test_mixed_sizes_are_fitted_to_the_median_side_on_both_loaders(tmp_path):
    root = write_tree(tmp_path / "mixed", ("train", "test"), per_class=5, size=lambda i: (16 + 2 * i, 30))
    for loader in ("memory", "dataloader"):
        data = build(folder_cfg(root, loader=loader))
        assert data.info.image_size == 20     # median short side of 16, 18, 20, 22, 24
        images, _ = next(iter(data.train))
        assert images.shape == (8, 3, 20, 20)


@pytest.mark.parametrize("side, augmentation, loader", [(20, "crop_flip", "DeviceEpochLoader"),
                                                        (72, "random_resized_crop", "ShuffledEpochLoader")])
def test_auto_augmentation_fits_the_image_size(tmp_path, side, augmentation, loader):
    root = write_tree(tmp_path / "tree", ("train", "test"), per_class=2, size=side)
    cfg = folder_cfg(root)
    data = build(cfg)
    assert type(data.train).__name__ == loader
    images, _ = next(iter(data.train))
    assert images.shape[-2:] == (side, side)
    assert resolve_image_folder(cfg).augmentation == augmentation


def test_image_size_can_be_set_and_the_augmentation_chosen(tmp_path):
    root = write_tree(tmp_path / "tree", ("train", "test"), per_class=2, size=40)
    data = build(folder_cfg(root, image_size=24, augment="random_resized_crop"))
    assert type(data.train).__name__ == "ShuffledEpochLoader"   # the device path cannot do RandomResizedCrop
    assert next(iter(data.train))[0].shape[-2:] == (24, 24) and next(iter(data.test))[0].shape[-2:] == (24, 24)


# --- bad input ------------------------------------------------------------------------------------------


def compose_folder(*overrides):
    return compose_train_config(["dataset=image_folder", *overrides])


def damage(root: Path) -> None:
    (root / "train" / "rose" / "000.png").write_bytes(b"not an image")


@pytest.mark.parametrize("make, overrides, message", [
    (None, (), "dataset.path: is not set. Point it at your ImageFolder tree"),
    (None, ("dataset.path={tmp}/nowhere",), "nowhere is not a folder"),
    (lambda r: (r / "test").mkdir(parents=True), ("dataset.path={tmp}/tree",), "has no train/ folder"),
    (lambda r: (r / "train" / "only").mkdir(parents=True), ("dataset.path={tmp}/tree",),
     "has 1 class folder(s); classification needs at least 2"),
    (lambda r: (write_tree(r, per_class=2), (r / "train" / "empty").mkdir()), ("dataset.path={tmp}/tree",),
     "empty holds no images"),
    (lambda r: (write_tree(r, per_class=2), damage(r)), ("dataset.path={tmp}/tree",),
     "1 image(s) cannot be read, e.g. .*000.png"),
    (lambda r: write_tree(r, per_class=1), ("dataset.path={tmp}/tree",), "have a single image"),
    (lambda r: write_tree(r, per_class=2), ("dataset.path={tmp}/tree", "dataset.image_size=big"),
     "dataset.image_size='big' is invalid"),
    (lambda r: write_tree(r, per_class=2), ("dataset.path={tmp}/tree", "dataset.augment=mixup"),
     "dataset.augment: 'mixup' is not known"),
    (lambda r: write_tree(r, per_class=2), ("dataset.path={tmp}/tree", "dataset.normalization=mine"),
     "dataset.normalization: 'mine' is not known"),
])
def test_bad_trees_and_settings_fail_at_validation_naming_the_key_and_the_fix(tmp_path, make, overrides, message):
    if make is not None:
        make(tmp_path / "tree")
    cfg = compose_folder(*(o.format(tmp=tmp_path) for o in overrides))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        validate_config(cfg)
    assert "dataset." in str(error.value)


# --- end to end -----------------------------------------------------------------------------------------


def test_a_generated_tree_trains_end_to_end_and_names_the_run_after_its_folder(tmp_path, make_cfg):
    root = write_tree(tmp_path / "flowers")
    cfg = make_cfg("dataset=image_folder", f"dataset.path={root}", "dataset.val_size=3",
                   "trainer.monitor=val/acc", "trainer.batch_size=8")
    assert run_name(cfg).startswith("dualadam-small_cnn-flowers-seed42-")
    validate_config(cfg)
    summary = train(cfg)
    assert summary["status"] == "completed" and "val/acc" in summary["final"]
    renamed = make_cfg("dataset=image_folder", f"dataset.path={root}", "dataset.display_name=my_flowers")
    assert "-my_flowers-" in run_name(renamed)


@pytest.mark.slow  # two runs of 640 images and a 5,000-image measurement
def test_the_cifar10_copy_as_an_image_folder_trains_exactly_like_dataset_cifar10(cifar10_subset_root, make_cfg):
    """Same images, order and augmentation: with CIFAR-10's normalization the runs are identical. The measured
    normalization (the default) is close to CIFAR-10's published per-pixel values."""
    shared = ("trainer.batch_size=64", "dataset.train_subset=640", "dataset.test_subset=200", "++dataset.val_size=100")
    cifar = make_cfg("dataset=cifar10", f"dataset.root={cifar10_subset_root}", "dataset.download=false", *shared)
    folder = make_cfg("dataset=image_folder", f"dataset.path={cifar10_subset_root / 'cifar10'}",
                      "dataset.normalization=cifar10", *shared)
    for cfg in (cifar, folder):
        cfg.trainer.monitor = "val/acc"
        train(cfg)
    rows, reference = read_metrics(folder.run_dir), read_metrics(cifar.run_dir)
    assert without_timings(rows) == without_timings(reference)
    measured = build(folder_cfg(cifar10_subset_root / "cifar10", train_subset=64, test_subset=30)).info
    published = NORMALIZATIONS["cifar10"]["dataset"]
    assert np.allclose(measured.mean, published.mean, atol=0.01)
    assert np.allclose(measured.std, published.std, atol=0.01)


def test_the_cifar10_copy_gives_the_same_batches_on_the_dataloader_path(cifar10_subset_root):
    common = dict(train_subset=60, test_subset=30, loader="dataloader")
    cifar = build(dict(name="cifar10", root=str(cifar10_subset_root), download=False, augmentation="crop_flip",
                       **common), batch_size=20, seed=3)
    folder = build(folder_cfg(cifar10_subset_root / "cifar10", normalization="cifar10", **common),
                   batch_size=20, seed=3)
    for ours, theirs in zip([*folder.train, *folder.test], [*cifar.train, *cifar.test], strict=True):
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
