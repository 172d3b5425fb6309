"""Datasets and loaders: determinism, sharding, the train-eval subset, every layout on real files, errors."""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

from dualadam.tasks.image.data import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    DATASET_NAMES,
    NORMALIZATIONS,
    DatasetInfo,
    DatasetNotFoundError,
    build_image_data,
)
from dualadam.tasks.image.data.prepare import SHARED_CIFAR10_SHA256, unpack_image_folder_tarball
from dualadam.tasks.image.data.sources import balanced_subset
from dualadam.training.epoch_order import EpochSampler

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
SMALL_SYNTHETIC = dict(name="synthetic", train_size=64, test_size=32, image_size=8, crop_padding=2)


def build(cfg: dict, batch_size: int = 16, num_workers: int = 0, seed: int = 0, **kwargs):
    return build_image_data(cfg, batch_size=batch_size, eval_batch_size=batch_size, num_workers=num_workers,
                            seed=seed, **kwargs)


def epoch_batches(data, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data.train.set_epoch(epoch)
    return list(data.train)


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b))


# --- synthetic data, order and augmentation -------------------------------------------------------------


def test_synthetic_batches_are_normalized_images_with_int64_labels():
    data = build(dict(SMALL_SYNTHETIC))
    images, labels = next(iter(data.train))
    assert images.shape == (16, 3, 8, 8) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() < 10
    assert data.info == DatasetInfo("synthetic", 10, 8, 3, data.info.mean, data.info.std)
    assert len(data.train) == 4 and len(data.test) == 2  # 64 / 16 and 32 / 16
    test_images = torch.cat([x for x, _ in data.test])  # no augmentation: exactly standardized
    assert test_images.mean().abs() < 0.1 and (test_images.std() - 1).abs() < 0.1


def test_synthetic_data_is_a_pure_function_of_its_config():
    first, second = build(dict(SMALL_SYNTHETIC)), build(dict(SMALL_SYNTHETIC))
    assert same_batches(list(first.test), list(second.test))
    other = build(dict(SMALL_SYNTHETIC, data_seed=1))
    assert not same_batches(list(first.test), list(other.test))


def test_epoch_order_and_augmentation_depend_only_on_seed_and_epoch():
    data, again = build(dict(SMALL_SYNTHETIC), seed=3), build(dict(SMALL_SYNTHETIC), seed=3)
    epoch2 = epoch_batches(data, 2)
    assert same_batches(epoch2, epoch_batches(again, 2))  # a fresh loader resumed at epoch 2
    assert same_batches(epoch2, epoch_batches(data, 2))  # iterating again repeats the epoch
    assert not same_batches(epoch2, epoch_batches(data, 3))
    assert not same_batches(epoch2, epoch_batches(build(dict(SMALL_SYNTHETIC), seed=4), 2))


def test_each_epoch_augments_the_same_image_differently():
    data = build(dict(SMALL_SYNTHETIC, train_size=1, test_size=1))  # one image: the order cannot change
    views = {epoch_batches(data, epoch)[0][0].numpy().tobytes() for epoch in range(6)}
    assert len(views) > 1  # 2-pixel crops x flips: 50 views


def test_the_loader_leaves_the_global_rng_alone():
    data = build(dict(SMALL_SYNTHETIC))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    epoch_batches(data, 0)
    assert torch.equal(torch.rand(3), expected)  # neither consumed nor reseeded (matters with num_workers=0)


def test_worker_processes_give_the_same_batches_as_the_main_process():
    in_process = build(dict(SMALL_SYNTHETIC), num_workers=0, seed=7)
    with_workers = build(dict(SMALL_SYNTHETIC), num_workers=2, seed=7)
    assert same_batches(epoch_batches(in_process, 1), epoch_batches(with_workers, 1))


@pytest.mark.parametrize("num_samples, world_size", [(10, 3), (12, 4), (5, 1)])
def test_rank_shards_are_disjoint_and_cover_every_sample(num_samples, world_size):
    for epoch in (0, 1):
        shards = []
        for rank in range(world_size):
            sampler = EpochSampler(num_samples, seed=5, rank=rank, world_size=world_size)
            sampler.set_epoch(epoch)
            shards.append([index for index, _ in sampler])
            assert len(shards[-1]) == len(sampler)
        everything = [index for shard in shards for index in shard]
        assert sorted(everything) == list(range(num_samples))  # disjoint and covering


def test_build_image_data_shards_the_training_loader_by_rank():
    sizes = [len(build(dict(SMALL_SYNTHETIC, train_size=50), batch_size=1, rank=r, world_size=3).train)
             for r in range(3)]
    assert sizes == [17, 17, 16]


# --- subsets and the train-eval set ----------------------------------------------------------------------


def test_balanced_subset_is_seeded_and_balanced():
    labels = np.repeat(np.arange(4), 25)
    chosen = balanced_subset(labels, 40, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [10, 10, 10, 10]
    assert np.array_equal(chosen, balanced_subset(labels, 40, seed=0))
    assert not np.array_equal(chosen, balanced_subset(labels, 40, seed=1))
    assert np.array_equal(balanced_subset(labels, None, seed=0), np.arange(100))


@pytest.mark.parametrize("train_size, test_size, train_eval_size, expected", [
    (64, 32, None, 32),  # as many as the test set
    (64, 32, 48, 48),  # more when asked
    (24, 32, None, 24),  # all of train when train is smaller than test
])
def test_train_eval_size_rule(train_size, test_size, train_eval_size, expected):
    cfg = dict(SMALL_SYNTHETIC, train_size=train_size, test_size=test_size, train_eval_size=train_eval_size)
    data = build(cfg, batch_size=8)
    assert sum(len(labels) for _, labels in data.train_eval) == expected


def test_train_eval_is_a_fixed_unaugmented_subset_of_the_training_images():
    data = build(dict(SMALL_SYNTHETIC, train_size=64, test_size=16), batch_size=8)
    first, second = list(data.train_eval), list(data.train_eval)
    assert same_batches(first, second)
    train_images = data.train.loader.dataset.source.pixels  # uint8 [N, H, W, C]
    mean, std = torch.tensor(data.info.mean).view(3, 1, 1), torch.tensor(data.info.std).view(3, 1, 1)
    for image in torch.cat([x for x, _ in first]):
        pixels = (image * std + mean).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert (train_images == pixels).all(axis=(1, 2, 3)).any()  # an exact, un-cropped training image


def test_train_eval_smaller_than_test_is_refused():
    with pytest.raises(ValueError, match="train_eval_size=8 is smaller than the test set"):
        build(dict(SMALL_SYNTHETIC, train_eval_size=8))


# --- bad configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    (dict(name="mnist"), "Unknown dataset dataset.name='mnist'"),
    (dict(train_subset=-5), "dataset.train_subset=-5 is invalid: expected null (all images) or an integer"),
    (dict(augmentation="mixup"), "Unknown augmentation dataset.augmentation='mixup'"),
])
def test_bad_dataset_config_names_the_key(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build(dict(SMALL_SYNTHETIC, **override))


def test_unknown_dataset_lists_every_choice():
    with pytest.raises(ValueError) as error:
        build(dict(name="mnist"))
    assert all(name in str(error.value) for name in DATASET_NAMES)


def test_unknown_normalization_lists_the_choices(tmp_path):
    write_cifar_image_folder(tmp_path / "cifar10", CIFAR10_CLASSES, per_class=1)
    with pytest.raises(ValueError, match=r"normalization='imagenet'. Valid choices: dataset, paper"):
        build(dict(name="cifar10", root=str(tmp_path), normalization="imagenet"))


# --- missing data --------------------------------------------------------------------------------------


def test_missing_cifar10_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        build(dict(name="cifar10", root=str(tmp_path), download=False))
    message = str(error.value)
    for needed in (str(tmp_path / "cifar10"), "cifar-10-batches-py", "train/<class>/", "test/<class>/",
                   "DUALADAM_DATA", "dataset.root", "make data"):
        assert needed in message, needed


@pytest.mark.parametrize("name, folder_hint", [("tiny_imagenet", "val_annotations.txt"),
                                                ("imagenet", "val/<wnid>/")])
def test_missing_imagenet_style_dataset_says_where_and_how(tmp_path, name, folder_hint):
    with pytest.raises(DatasetNotFoundError) as error:
        build(dict(name=name, root=str(tmp_path)))
    assert str(tmp_path / name) in str(error.value) and folder_hint in str(error.value)


def test_dataset_configs_load_and_point_at_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DUALADAM_DATA", str(tmp_path))
    for path in sorted((REPO / "configs" / "dataset").glob("*.yaml")):
        cfg = OmegaConf.load(path)
        if "root" not in cfg:
            continue  # a text dataset of task=llm_finetune (tests/test_llm.py)
        assert cfg.name == path.stem and cfg.name in DATASET_NAMES
        assert cfg.root == str(tmp_path)  # ${oc.env:DUALADAM_DATA,data}
        if cfg.name == "synthetic":
            assert build(cfg).info.num_classes == cfg.num_classes
        else:
            with pytest.raises(DatasetNotFoundError, match=str(tmp_path / cfg.name)):
                build(OmegaConf.merge(cfg, {"download": False}))


# --- CIFAR as an ImageFolder tree ----------------------------------------------------------------------


def save_image(image: torch.Tensor, path: Path, **options) -> None:
    """Write a uint8 [3, H, W] tensor as an image file; the format follows the suffix (PNG is lossless)."""
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, **options)


def class_image(label: int, size: int = 32) -> torch.Tensor:
    """A uint8 [3, size, size] image whose channels encode its label: R = 2 * label, G = 255 - label."""
    image = torch.empty(3, size, size, dtype=torch.uint8)
    image[0], image[1], image[2] = 2 * label, 255 - label, 128
    return image


def write_cifar_image_folder(folder: Path, classes, per_class: int) -> None:
    for split, count in (("train", per_class), ("test", per_class)):
        for label, name in enumerate(classes):
            (folder / split / name).mkdir(parents=True)
            for i in range(count):
                save_image(class_image(label), folder / split / name / f"{i:04d}.png")


def decoded_labels(data, loader) -> tuple[list[int], list[int]]:
    """(labels the loader gave, labels read back from the pixels' red channel)."""
    red_mean, red_std = data.info.mean[0], data.info.std[0]
    given, from_pixels = [], []
    for images, labels in loader:
        red = (images[:, 0, 0, 0] * red_std + red_mean) * 255
        from_pixels += (red / 2).round().long().tolist()
        given += labels.tolist()
    return given, from_pixels


@pytest.mark.parametrize("name, classes, per_class", [("cifar10", CIFAR10_CLASSES, 3),
                                                      ("cifar100", CIFAR100_CLASSES, 1)])
@pytest.mark.parametrize("preload", [True, False])
def test_cifar_image_folder_layout_keeps_the_canonical_label_order(tmp_path, name, classes, per_class, preload):
    write_cifar_image_folder(tmp_path / name, classes, per_class)
    data = build(dict(name=name, root=str(tmp_path), download=False, preload=preload), batch_size=32)
    assert data.info.num_classes == len(classes) and data.info.image_size == 32
    given, from_pixels = decoded_labels(data, data.test)
    assert len(given) == per_class * len(classes) and given == from_pixels
    assert data.train.loader.dataset.source.classes == classes


def test_cifar_image_folder_with_foreign_class_names_is_refused(tmp_path):
    write_cifar_image_folder(tmp_path / "cifar10", [*CIFAR10_CLASSES[:9], "lorry"], per_class=1)
    with pytest.raises(ValueError, match="rename the folders to match"):
        build(dict(name="cifar10", root=str(tmp_path), download=False))


def test_cifar_class_lists_are_the_canonical_ones():
    assert len(CIFAR10_CLASSES) == 10 and len(CIFAR100_CLASSES) == len(set(CIFAR100_CLASSES)) == 100
    # Both datasets' meta files list their classes alphabetically; an ImageFolder's sorted folder names
    # therefore agree with the canonical labels too, but the loader maps by name rather than rely on it.
    assert list(CIFAR10_CLASSES) == sorted(CIFAR10_CLASSES) and list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)


def test_cifar100_normalization_defaults_to_its_own_and_paper_uses_cifar10s(tmp_path):
    write_cifar_image_folder(tmp_path / "cifar100", CIFAR100_CLASSES, per_class=1)
    own = build(dict(name="cifar100", root=str(tmp_path), download=False)).info
    paper = build(dict(name="cifar100", root=str(tmp_path), download=False, normalization="paper")).info
    assert own.mean == NORMALIZATIONS["cifar100"]["dataset"].mean
    assert (paper.mean, paper.std) == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


# --- CIFAR as torchvision's canonical pickled batches ------------------------------------------------------


def write_canonical_cifar(folder: Path, tv_class, classes, images_per_file: int) -> dict[str, str]:
    """Write the canonical python-pickle files (same format as the real ones); returns their md5 sums.

    Image i of a file has label i % K; its R plane is 2 * label, G is 255 - label, B is 128, except pixel
    (row 0, col 1) of R, which is 250 (to catch a transposed layout).
    """
    base = folder / tv_class.base_folder
    base.mkdir(parents=True)
    label_key = "labels" if tv_class is CIFAR10 else "fine_labels"
    md5s = {}
    for filename, _ in tv_class.train_list + tv_class.test_list:
        labels = [i % len(classes) for i in range(images_per_file)]
        planes = np.stack([class_image(label).numpy() for label in labels])  # [N, 3, 32, 32]
        planes[:, 0, 0, 1] = 250
        entry = {"data": planes.reshape(len(labels), 3072), label_key: labels}
        (base / filename).write_bytes(pickle.dumps(entry))
        md5s[filename] = hashlib.md5((base / filename).read_bytes()).hexdigest()
    meta = base / tv_class.meta["filename"]
    meta.write_bytes(pickle.dumps({tv_class.meta["key"]: list(classes)}))
    md5s[meta.name] = hashlib.md5(meta.read_bytes()).hexdigest()
    return md5s


def accept_md5s(monkeypatch, tv_class, md5s: dict[str, str]) -> None:
    """torchvision refuses files whose md5 differs from the real CIFAR's; register our files' sums instead."""
    monkeypatch.setattr(tv_class, "train_list", [[f, md5s[f]] for f, _ in tv_class.train_list])
    monkeypatch.setattr(tv_class, "test_list", [[f, md5s[f]] for f, _ in tv_class.test_list])
    monkeypatch.setattr(tv_class, "meta", {**tv_class.meta, "md5": md5s[tv_class.meta["filename"]]})


@pytest.mark.parametrize("name, tv_class, classes", [("cifar10", CIFAR10, CIFAR10_CLASSES),
                                                     ("cifar100", CIFAR100, CIFAR100_CLASSES)])
def test_cifar_canonical_files_are_read_in_label_and_pixel_order(tmp_path, monkeypatch, name, tv_class, classes):
    accept_md5s(monkeypatch, tv_class, write_canonical_cifar(tmp_path / name, tv_class, classes, 100))
    data = build(dict(name=name, root=str(tmp_path), download=False), batch_size=50)
    source = data.test.dataset.source
    assert source.classes == classes and len(source) == 100
    image, label = source[7]
    assert label == 7 and image.shape == (3, 32, 32)
    assert image[0, 0, 1] == 250 and image[0, 1, 0] == 14 and (image[1] == 248).all()  # CHW, not transposed
    given, from_pixels = decoded_labels(data, data.test)
    assert given == from_pixels and len(data.train.loader.dataset) == 100 * len(tv_class.train_list)


def test_cifar_canonical_files_with_wrong_md5_are_reported(tmp_path):
    write_canonical_cifar(tmp_path / "cifar10", CIFAR10, CIFAR10_CLASSES, 10)  # sums differ from the real ones
    with pytest.raises(DatasetNotFoundError, match="corrupted"):
        build(dict(name="cifar10", root=str(tmp_path), download=False))


# --- Tiny-ImageNet and ImageNet on small trees of real JPEG files -----------------------------------------

WNIDS = ("n01443537", "n01629819", "n01641577")


def write_jpeg_image(path: Path, label: int, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    image[0] = 60 * label + 20  # JPEG keeps flat colours to within a few levels
    save_image(image, path, quality=95)


@pytest.mark.parametrize("val_layout", ["as_shipped", "image_folder"])
def test_tiny_imagenet_reads_both_val_layouts(tmp_path, val_layout):
    folder = tmp_path / "tiny_imagenet"
    annotations = []
    for label, wnid in enumerate(WNIDS):
        for i in range(2):
            write_jpeg_image(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", label, 64, 64)
        if val_layout == "as_shipped":
            write_jpeg_image(folder / "val" / "images" / f"val_{label}.JPEG", label, 64, 64)
            annotations.append(f"val_{label}.JPEG\t{wnid}\t0\t0\t63\t63")
        else:
            write_jpeg_image(folder / "val" / wnid / f"val_{label}.JPEG", label, 64, 64)
    if annotations:
        (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations[::-1]) + "\n")
    data = build(dict(name="tiny_imagenet", root=str(tmp_path)), batch_size=4)
    assert data.info.num_classes == 3 and data.info.image_size == 64
    assert data.train.loader.dataset.source.classes == WNIDS
    images, labels = next(iter(data.test))
    red = (images[:, 0, 32, 32] * data.info.std[0] + data.info.mean[0]) * 255
    assert ((red - 20) / 60).round().long().tolist() == labels.tolist()
    assert sorted(labels.tolist()) == [0, 1, 2]
    train_images, _ = next(iter(data.train))
    assert train_images.shape == (4, 3, 64, 64)


def test_imagenet_resizes_and_crops_images_of_any_size(tmp_path):
    for label, wnid in enumerate(WNIDS[:2]):
        write_jpeg_image(tmp_path / "imagenet" / "train" / wnid / "a.JPEG", label, 300, 260)
        write_jpeg_image(tmp_path / "imagenet" / "train" / wnid / "b.JPEG", label, 180, 240)
        write_jpeg_image(tmp_path / "imagenet" / "val" / wnid / "c.JPEG", label, 250, 333)
    data = build(dict(name="imagenet", root=str(tmp_path)), batch_size=4)
    assert data.info == DatasetInfo("imagenet", 2, 224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train_images, train_labels = next(iter(data.train))
    test_images, test_labels = next(iter(data.test))
    assert train_images.shape == (4, 3, 224, 224) and test_images.shape == (2, 3, 224, 224)
    assert sorted(train_labels.tolist()) == [0, 0, 1, 1] and test_labels.tolist() == [0, 1]


# --- the real CIFAR-10 (the shared JPEG copy) -------------------------------------------------------------

PER_CLASS = 100


@pytest.fixture(scope="session")
def real_cifar10(tmp_path_factory):
    """The first 100 images per class and split of the shared CIFAR-10 tarball, unpacked once per session;
    returns (data root, image counts per (split, class) in the whole archive)."""
    if not SHARED_CIFAR10.is_file():  # a plain clone: these tests skip, not fail
        pytest.skip(f"needs the real CIFAR-10 copy at {SHARED_CIFAR10} (../shared/data beside the repository, "
                    "see ../shared/data/README.md)")
    root = tmp_path_factory.mktemp("data")
    counts = unpack_image_folder_tarball(SHARED_CIFAR10, root / "cifar10", PER_CLASS, SHARED_CIFAR10_SHA256)
    return root, counts


def test_real_cifar10_archive_has_the_published_counts_and_classes(real_cifar10):
    _, counts = real_cifar10
    for name in CIFAR10_CLASSES:
        assert counts["train", name] == 5000 and counts["test", name] == 1000
    assert sum(counts.values()) == 60000


def test_real_cifar10_loads_with_canonical_labels_shapes_and_statistics(real_cifar10):
    root, _ = real_cifar10
    data = build(dict(name="cifar10", root=str(root), download=False, test_subset=500), batch_size=100)
    train, test = data.train.loader.dataset.source, data.test.dataset.source
    assert train.classes == CIFAR10_CLASSES and len(train) == 10 * PER_CLASS and len(test) == 500
    assert np.bincount(train.labels).tolist() == [PER_CLASS] * 10 and np.bincount(test.labels).tolist() == [50] * 10
    assert train.pixels.shape == (1000, 32, 32, 3)
    pixels = train.pixels.reshape(-1, 3) / 255.0  # published: mean .4914 .4822 .4465, std .2470 .2435 .2616
    assert np.allclose(pixels.mean(0), NORMALIZATIONS["cifar10"]["dataset"].mean, atol=0.02)
    assert np.allclose(pixels.std(0), NORMALIZATIONS["cifar10"]["dataset"].std, atol=0.02)
    test_images = torch.cat([x for x, _ in data.test])
    assert test_images.shape == (500, 3, 32, 32)
    assert test_images.mean((0, 2, 3)).abs().max() < 0.1 and (test_images.std((0, 2, 3)) - 1).abs().max() < 0.1
    train_images, _ = next(iter(data.train))
    assert train_images.shape == (100, 3, 32, 32)
