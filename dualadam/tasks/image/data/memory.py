"""The in-memory path: which datasets take it (``dataset.loader``), and building its loaders.

``dataset.loader``:
  - ``memory``: decode every image once (cached on disk, ``pixel_cache``), hold the whole set on the training
    device as one uint8 tensor, and augment and normalize whole batches there (``device_loaders``).
  - ``dataloader``: torch's DataLoader with per-sample torchvision transforms in worker processes.
  - ``auto``: ``memory`` when the dataset's augmentation can run on the device (crop_flip, flip, none), its
    evaluation needs no resize of full-size images (``eval_resize_ratio`` 1), and its decoded train and test
    images fit in ``dataset.memory_budget_gb``: CIFAR-10/100 (0.18 GB), synthetic data and Tiny-ImageNet
    (1.35 GB). ImageNet (RandomResizedCrop from full-resolution files) takes the DataLoader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dualadam.tasks.image.data.device_loaders import DeviceEpochLoader, DeviceEvalLoader, to_device
from dualadam.tasks.image.data.device_transforms import DEVICE_AUGMENTATIONS, Normalizer
from dualadam.tasks.image.data.info import Normalization
from dualadam.tasks.image.data.pixel_cache import decoded_with_cache
from dualadam.tasks.image.data.sources import ArrayImages, FileImages, ImageSource

LOADERS = ("auto", "memory", "dataloader")
DEFAULT_MEMORY_BUDGET_GB = 4.0


def decoded_bytes(sources: tuple[ImageSource, ...], fit_size: int | None) -> int:
    """Bytes the sources take as uint8 arrays (file sources: estimated from their first image's size)."""
    total = 0
    for source in sources:
        if isinstance(source, ArrayImages):
            total += source.pixels.nbytes
        elif fit_size is not None:
            total += len(source) * 3 * fit_size * fit_size
        else:
            with Image.open(source.paths[0]) as image:  # reads the header only
                total += len(source) * 3 * image.width * image.height
    return total


def resolve_loader(choice: str, augmentation: str, eval_resize_ratio: float, size_in_bytes,
                   budget_gb: float = DEFAULT_MEMORY_BUDGET_GB) -> str:
    """``"memory"`` or ``"dataloader"`` for the ``dataset.loader`` setting ``choice``.

    ``size_in_bytes``: a callable giving the decoded size (only called for ``auto``: it may open a file).
    """
    if choice not in LOADERS:
        raise ValueError(f"dataset.loader={choice!r} is not known; choose one of {list(LOADERS)}")
    supported = augmentation in DEVICE_AUGMENTATIONS and eval_resize_ratio == 1.0
    if choice == "memory" and not supported:
        raise ValueError(f"dataset.loader=memory cannot do augmentation={augmentation!r} with "
                         f"eval_resize_ratio={eval_resize_ratio}: the device path does "
                         f"{list(DEVICE_AUGMENTATIONS)} on images already at the model's size. "
                         "Use dataset.loader=dataloader (or auto)")
    if choice == "auto":
        return "memory" if supported and size_in_bytes() <= budget_gb * 2**30 else "dataloader"
    return choice


def fit_size_for(augmentation: str, image_size: int) -> int | None:
    """Fit images to the model size at decode time where the DataLoader path does so per sample anyway
    (``flip`` and ``none`` start with Resize + CenterCrop); ``crop_flip`` crops the image as it is."""
    return image_size if augmentation in ("flip", "none") else None


def in_memory(source: ImageSource, folder: Path, split: str, fit_size: int | None) -> ArrayImages:
    """``source`` decoded (through the on-disk cache for files); arrays are returned as they are."""
    if isinstance(source, FileImages):
        return decoded_with_cache(source, folder, split, fit_size)
    return source


@dataclass(frozen=True)
class DevicePlacement:
    """Where and in which form batches are handed to the model."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    memory_format: torch.memory_format = torch.contiguous_format


def build_device_loaders(train: ArrayImages, test: ArrayImages, val: ArrayImages | None,
                         train_eval_indices: np.ndarray, norm: Normalization, placement: DevicePlacement, *,
                         augmentation: str, padding: int, image_size: int, batch_size: int, eval_batch_size: int,
                         seed: int, rank: int, world_size: int
                         ) -> tuple[DeviceEpochLoader, DeviceEvalLoader, DeviceEvalLoader, DeviceEvalLoader | None]:
    """The train, train-eval, test and validation (None without ``val``) loaders over the sources moved to
    ``placement.device``."""
    for name, source in (("train", train), ("test", test), ("val", val)):
        if source is not None and source.pixels.shape[1:3] != (image_size, image_size):
            raise ValueError(f"the {name} images are {source.pixels.shape[1]}x{source.pixels.shape[2]} but "
                             f"dataset.image_size={image_size}, and augmentation={augmentation!r} crops "
                             "without resizing; set dataset.image_size to match or dataset.loader=dataloader")
    device = torch.device(placement.device)
    normalize = Normalizer(norm.mean, norm.std, device=device, dtype=placement.dtype,
                           memory_format=placement.memory_format)
    train_pixels, train_labels = to_device(train.pixels, train.labels, device)
    test_pixels, test_labels = to_device(test.pixels, test.labels, device)
    train_eval = torch.as_tensor(train_eval_indices, dtype=torch.int64).to(device)
    val_loader = None
    if val is not None:
        val_pixels, val_labels = to_device(val.pixels, val.labels, device)
        val_loader = DeviceEvalLoader(val_pixels, val_labels, normalize, batch_size=eval_batch_size)
    return (
        DeviceEpochLoader(train_pixels, train_labels, normalize, batch_size=batch_size, seed=seed,
                          augmentation=augmentation, padding=padding, rank=rank, world_size=world_size),
        DeviceEvalLoader(train_pixels, train_labels, normalize, batch_size=eval_batch_size, indices=train_eval),
        DeviceEvalLoader(test_pixels, test_labels, normalize, batch_size=eval_batch_size),
        val_loader,
    )
