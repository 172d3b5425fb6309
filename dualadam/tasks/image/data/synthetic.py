"""A small, deterministic, offline image-classification task for smoke runs and tests.

Each class has a fixed mean colour and a low-frequency pattern; each image is its class's signal plus pixel
noise. A small CNN learns it within an epoch or two, yet it is not trivially separable by any single pixel.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dualadam.tasks.image.data.info import Normalization
from dualadam.tasks.image.data.sources import ArrayImages


def _class_signals(num_classes: int, in_chans: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Per-class signal images [K, H, W, C] in pixel units around 0: a colour plus an upsampled 4x4 pattern."""
    colours = rng.normal(0.0, 35.0, size=(num_classes, in_chans, 1, 1))
    coarse = torch.from_numpy(rng.normal(0.0, 35.0, size=(num_classes, in_chans, 4, 4)))
    patterns = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return (colours + patterns.numpy()).transpose(0, 2, 3, 1)


def _draw(signals: np.ndarray, count: int, noise: float, rng: np.random.Generator) -> ArrayImages:
    labels = np.arange(count) % len(signals)  # balanced classes
    rng.shuffle(labels)
    pixels = 128.0 + signals[labels] + rng.normal(0.0, noise, size=(count, *signals.shape[1:]))
    classes = [f"class_{k}" for k in range(len(signals))]
    return ArrayImages(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), labels, classes)


def synthetic_images(num_classes: int = 10, train_size: int = 512, test_size: int = 256, image_size: int = 32,
                     in_chans: int = 3, noise: float = 40.0, seed: int = 0) -> tuple[ArrayImages, ArrayImages]:
    """Train and test sets drawn from the same class signals with independent noise (``noise`` in 0-255 units)."""
    rng = np.random.default_rng(seed)
    signals = _class_signals(num_classes, in_chans, image_size, rng)
    return _draw(signals, train_size, noise, rng), _draw(signals, test_size, noise, rng)


def measured_normalization(images: ArrayImages) -> Normalization:
    """Per-channel mean and std of ``images`` in [0, 1] units (synthetic data has no published statistics)."""
    pixels = images.pixels.reshape(-1, images.pixels.shape[-1]).astype(np.float64) / 255.0
    return Normalization(tuple(pixels.mean(0).round(4).tolist()), tuple(pixels.std(0).round(4).tolist()))
