"""``build_image_data``: a dataset config in, the train / train-eval / validation / test loaders and the
dataset's facts out.

Which training images a run holds, in this order (all fixed by ``dataset.data_seed``, none by the training
seed, so every seed and optimizer sees the same images):

1. ``dataset.val_size`` (absent or null: no validation split): a class-balanced validation split is taken
   from the *whole* training set and never trained on. It is drawn first, so it does not change with
   ``train_subset``: studies of different sizes are tuned on the same images.
2. ``dataset.train_subset``: a class-balanced subset of the remaining training images; the run trains on it.
3. ``train_eval``: a fixed subset of the images the run trains on (``_train_eval_indices``).

So "5,000 validation images from CIFAR-10's 50,000, training on 12,000 of the other 45,000" is
``dataset.val_size=5000 dataset.train_subset=12000``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from dualadam.tasks.image.checks import check_dataset
from dualadam.tasks.image.data.cifar import load_cifar
from dualadam.tasks.image.data.device_loaders import DeviceEvalLoader
from dualadam.tasks.image.data.folders import load_imagenet, load_tiny_imagenet
from dualadam.tasks.image.data.image_folder import load_image_folder, resolve_image_folder
from dualadam.tasks.image.data.info import DatasetInfo, Normalization, normalization_for
from dualadam.tasks.image.data.loaders import ShuffledEpochLoader, TransformedImages, eval_loader
from dualadam.tasks.image.data.memory import (
    DEFAULT_MEMORY_BUDGET_GB,
    DevicePlacement,
    build_device_loaders,
    decoded_bytes,
    fit_size_for,
    in_memory,
    resolve_loader,
)
from dualadam.tasks.image.data.sources import FileImages, ImageSource, balanced_subset
from dualadam.tasks.image.data.synthetic import measured_normalization, synthetic_images
from dualadam.tasks.image.data.transforms import eval_transform, train_transform
from dualadam.training.epoch_order import mix_seed
from dualadam.training.task import EpochLoader


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one dataset, and its defaults (each overridable by the key of the same name)."""

    load: Callable[[DictConfig], tuple[ImageSource, ImageSource]]
    image_size: int
    augmentation: str
    eval_resize_ratio: float = 1.0  # eval: resize to image_size / ratio, then center-crop image_size
    preload: bool = False  # decode every image into memory once, before training
    # A copy of the config with what the dataset measures written in (image_size, augmentation, mean/std...)
    resolve: Callable[[DictConfig], DictConfig] | None = None
    fits_images: bool = False  # the memory path decodes images fitted to image_size (trees of mixed sizes)


def _folder(cfg: DictConfig) -> Path:
    """The dataset's folder (the pixel cache lives in it): ``dataset.path`` if given, else <root>/<name>."""
    if cfg.get("path"):
        return Path(os.path.expanduser(str(cfg.path)))
    return Path(os.path.expanduser(str(cfg.get("root") or "data"))) / cfg.name


def _synthetic(cfg: DictConfig) -> tuple[ImageSource, ImageSource]:
    return synthetic_images(
        num_classes=cfg.get("num_classes", 10), train_size=cfg.get("train_size", 512),
        test_size=cfg.get("test_size", 256), image_size=cfg.get("image_size", 32),
        in_chans=cfg.get("in_chans", 3), noise=cfg.get("noise", 40.0), seed=cfg.get("data_seed", 0))


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(lambda c: load_cifar("cifar10", _folder(c), c.get("download", False)), 32,
                           "crop_flip", preload=True),
    "cifar100": DatasetSpec(lambda c: load_cifar("cifar100", _folder(c), c.get("download", False)), 32,
                            "crop_flip", preload=True),
    "tiny_imagenet": DatasetSpec(lambda c: load_tiny_imagenet(_folder(c)), 64, "flip"),
    "imagenet": DatasetSpec(lambda c: load_imagenet(_folder(c)), 224, "random_resized_crop",
                            eval_resize_ratio=224 / 256),
    "synthetic": DatasetSpec(_synthetic, 32, "crop_flip"),
    "image_folder": DatasetSpec(load_image_folder, 32, "crop_flip", resolve=resolve_image_folder,
                                fits_images=True),
}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


@dataclass
class ImageData:
    """The loaders of one run. ``train`` augments and reshuffles per epoch; ``train_eval`` (a fixed subset of
    the training images) and ``test`` use the evaluation transform in a fixed order."""

    info: DatasetInfo
    train: EpochLoader
    train_eval: DataLoader | DeviceEvalLoader  # len() is the number of batches; iterable repeatedly, same order
    test: DataLoader | DeviceEvalLoader
    val: DataLoader | DeviceEvalLoader | None = None  # held-out training images (dataset.val_size), else None


def _normalization(cfg: DictConfig, train: ImageSource) -> Normalization:
    if cfg.get("mean") is not None:  # written in by the spec's resolve (image_folder)
        return Normalization(tuple(cfg.mean), tuple(cfg.std))
    if cfg.name == "synthetic":
        return measured_normalization(train)
    return normalization_for(cfg.name, cfg.get("normalization", "dataset"))


def _train_eval_indices(cfg: DictConfig, train_size: int, test_size: int) -> np.ndarray:
    """A fixed subset of the training set, as large as the test set unless dataset.train_eval_size says more."""
    size = cfg.get("train_eval_size") or test_size
    if size < test_size:
        raise ValueError(f"dataset.train_eval_size={size} is smaller than the test set ({test_size}); the "
                         "train-eval estimate must be at least as precise as the test one")
    generator = np.random.default_rng(mix_seed(cfg.get("data_seed", 0), 1))
    return np.sort(generator.permutation(train_size)[: min(size, train_size)])


def validation_indices(cfg: DictConfig, labels: np.ndarray) -> np.ndarray | None:
    """Indices (sorted) of the validation split among all training images ``labels``, or None without one.

    Class-balanced and drawn with its own stream of ``data_seed`` (not the one ``train_subset`` uses)."""
    size = cfg.get("val_size")
    if size is None:
        return None
    needed = cfg.get("train_subset") or 1
    if size + needed > len(labels):
        raise ValueError(f"dataset.val_size={size} leaves {len(labels) - size} of the {len(labels)} training "
                         f"images to train on, but at least {needed} are needed (dataset.train_subset); lower "
                         "dataset.val_size or dataset.train_subset")
    return balanced_subset(labels, size, mix_seed(cfg.get("data_seed", 0), 2))


def _sources(cfg: DictConfig, spec: DatasetSpec) -> dict[str, ImageSource]:
    """``{"train", "test"}`` and, with ``dataset.val_size``, ``"val"`` (the module docstring gives the order)."""
    train, test = spec.load(cfg)
    data_seed = cfg.get("data_seed", 0)
    held_out = validation_indices(cfg, train.labels)
    sources = {}
    if held_out is not None:
        sources["val"] = train.subset(held_out)
        train = train.subset(np.setdiff1d(np.arange(len(train)), held_out))
    sources["train"] = train.subset(balanced_subset(train.labels, cfg.get("train_subset"),
                                                    data_seed))
    sources["test"] = test.subset(balanced_subset(test.labels, cfg.get("test_subset"), data_seed))
    return sources


def _loader_kind(cfg: DictConfig, spec: DatasetSpec, sources: dict[str, ImageSource]) -> str:
    """``dataset.loader`` resolved to "memory" or "dataloader" (``dualadam.tasks.image.data.memory`` says how). A config
    without the key keeps the DataLoader; every file in ``configs/dataset/`` sets ``loader: auto``."""
    augmentation = cfg.get("augmentation") or spec.augmentation
    return resolve_loader(cfg.get("loader") or "dataloader", augmentation,
                          cfg.get("eval_resize_ratio") or spec.eval_resize_ratio,
                          lambda: decoded_bytes(tuple(sources.values()), _fit_size(cfg, spec)),
                          cfg.get("memory_budget_gb") or DEFAULT_MEMORY_BUDGET_GB)


def _fit_size(cfg: DictConfig, spec: DatasetSpec) -> int | None:
    """The side images are fitted to as they decode for the memory path (``memory.fit_size_for``)."""
    image_size = cfg.get("image_size") or spec.image_size
    return image_size if spec.fits_images else fit_size_for(cfg.get("augmentation") or spec.augmentation,
                                                            image_size)


def _decoded(cfg: DictConfig, spec: DatasetSpec, sources: dict[str, ImageSource],
             kind: str) -> dict[str, ImageSource]:
    """The memory path decodes through the pixel cache; the DataLoader path decodes up front if preloading."""
    if kind == "memory":
        return {split: in_memory(s, _folder(cfg), split, _fit_size(cfg, spec)) for split, s in sources.items()}
    if cfg.get("preload", spec.preload):
        return {split: s.decode_all() if isinstance(s, FileImages) else s for split, s in sources.items()}
    return sources


def build_image_data(dataset_cfg: DictConfig | Mapping, *, batch_size: int, eval_batch_size: int,
                     num_workers: int, seed: int, rank: int = 0, world_size: int = 1,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     memory_format: torch.memory_format = torch.contiguous_format) -> ImageData:
    """Load ``dataset_cfg.name`` and build its loaders.

    ``seed`` fixes the training order and augmentation (with the epoch); ``dataset.data_seed`` fixes which
    images the subsets hold, so that runs with different seeds are evaluated on the same images. Each of
    ``world_size`` ranks gets a disjoint shard of every epoch's training order (shard lengths differ by at
    most one sample, so batch counts can differ by one: a DDP loop must allow for that); evaluation is not
    sharded.

    With ``dataset.loader`` resolving to ``memory``, the loaders hold the images on ``device`` and yield
    batches already there, in ``dtype`` (the compute dtype) and ``memory_format``; ``num_workers`` is unused,
    and rank r takes the r-th contiguous slice of each global batch of ``batch_size * world_size``
    (``device_loaders``). The DataLoader path yields float32 CPU batches whatever these three say.
    """
    cfg = dataset_cfg if isinstance(dataset_cfg, DictConfig) else OmegaConf.create(dict(dataset_cfg))
    check_dataset(cfg)  # the task's own checks; the trainer's batch sizes and workers are checked by the core
    spec = DATASETS[cfg.name]
    if spec.resolve is not None:
        cfg = spec.resolve(cfg)
    sources = _sources(cfg, spec)
    kind = _loader_kind(cfg, spec, sources)
    decoded = _decoded(cfg, spec, sources, kind)
    train, test, val = decoded["train"], decoded["test"], decoded.get("val")
    norm = _normalization(cfg, train)
    image_size = cfg.get("image_size") or spec.image_size
    info = DatasetInfo(cfg.get("display_name") or cfg.name, len(train.classes), image_size, int(train[0][0].shape[0]), norm.mean, norm.std)
    if kind == "memory":
        loaders = build_device_loaders(
            train, test, val, _train_eval_indices(cfg, len(train), len(test)), norm,
            DevicePlacement(torch.device(device), dtype, memory_format),
            augmentation=cfg.get("augmentation") or spec.augmentation, padding=cfg.get("crop_padding", 4),
            image_size=image_size, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed, rank=rank,
            world_size=world_size)
        return ImageData(info, *loaders)

    augment = train_transform(cfg.get("augmentation") or spec.augmentation, image_size, norm,
                              cfg.get("crop_padding", 4))
    evaluate = eval_transform(image_size, norm, cfg.get("eval_resize_ratio") or spec.eval_resize_ratio)
    train_eval = train.subset(_train_eval_indices(cfg, len(train), len(test)))
    return ImageData(
        info=info,
        train=ShuffledEpochLoader(TransformedImages(train, augment), batch_size, num_workers, seed, rank,
                                  world_size),
        train_eval=eval_loader(TransformedImages(train_eval, evaluate), eval_batch_size, num_workers),
        test=eval_loader(TransformedImages(test, evaluate), eval_batch_size, num_workers),
        val=None if val is None else eval_loader(TransformedImages(val, evaluate), eval_batch_size, num_workers),
    )
