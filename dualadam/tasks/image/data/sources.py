"""Image sources: labelled images as uint8 tensors, before any augmentation or normalization.

Decoding (files -> uint8 pixels) and augmenting (uint8 pixels -> a normalized float tensor) are separate
steps on purpose: a source can be decoded once into memory (``FileImages.decode_all``) and then fed to any
loader, including a device-resident one, without touching the augmentation code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image


class ImageSource(Protocol):
    """Labelled images, indexable; ``source[i]`` is ``(uint8 tensor [C, H, W], int label)``."""

    labels: np.ndarray  # int64 [N]
    classes: tuple[str, ...]

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...
    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSource: ...


class ArrayImages:
    """Images already decoded into one uint8 array of shape [N, H, W, C] (the layout torchvision's CIFAR uses)."""

    def __init__(self, pixels: np.ndarray, labels: Sequence[int] | np.ndarray, classes: Sequence[str]):
        if pixels.dtype != np.uint8 or pixels.ndim != 4:
            raise ValueError(f"pixels must be uint8 [N, H, W, C], got {pixels.dtype} {pixels.shape}")
        if len(pixels) != len(labels):
            raise ValueError(f"{len(pixels)} images but {len(labels)} labels")
        self.pixels = pixels
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = tuple(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.pixels[index]).permute(2, 0, 1), int(self.labels[index])

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArrayImages:
        indices = np.asarray(indices, dtype=np.int64)
        return ArrayImages(self.pixels[indices], self.labels[indices], self.classes)


class FileImages:
    """Image files (JPEG/PNG) decoded to RGB on every access; ``decode_all`` turns them into ``ArrayImages``."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int] | np.ndarray, classes: Sequence[str]):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} files but {len(labels)} labels")
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = tuple(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return decode_rgb(self.paths[index]), int(self.labels[index])

    def subset(self, indices: Sequence[int] | np.ndarray) -> FileImages:
        indices = np.asarray(indices, dtype=np.int64)
        return FileImages([self.paths[i] for i in indices], self.labels[indices], self.classes)

    def decode_all(self, threads: int | None = None) -> ArrayImages:
        """Decode every file once into memory (in ``threads`` threads; PIL releases the GIL while decoding).
        All images must have the same size."""
        if not self.paths:
            raise ValueError("there are no images to decode")
        with ThreadPoolExecutor(threads or os.cpu_count()) as pool:
            images = list(pool.map(decode_rgb, self.paths, chunksize=256))
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) > 1:
            raise ValueError(f"the images under {Path(self.paths[0]).parent.parent} have different sizes "
                             f"{sorted(shapes)[:3]}; set dataset.preload=false for mixed sizes")
        pixels = torch.stack(images).permute(0, 2, 3, 1).contiguous().numpy()
        return ArrayImages(pixels, self.labels, self.classes)


def decode_rgb(path: str) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor [3, H, W] (grayscale, palette and RGBA files are converted)."""
    with Image.open(path) as image:
        pixels = np.array(image.convert("RGB"))  # a writable copy
    return torch.from_numpy(pixels).permute(2, 0, 1)


def balanced_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded, class-balanced subset of ``size`` items, sorted (all indices if size is None).

    Each class gets ``size // num_classes`` items (the first classes one more when it does not divide), or all
    its items if it has fewer; the choice depends only on ``labels``, ``size`` and ``seed``.
    """
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    if size <= 0:
        raise ValueError(f"subset size must be positive, got {size}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    quota = np.full(len(classes), size // len(classes))
    quota[: size % len(classes)] += 1
    chosen = []
    for label, count in zip(classes, quota, strict=True):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(chosen))
