"""Augmentation and evaluation transforms: uint8 image tensor [C, H, W] -> normalized float32 [C, S, S]."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from dualadam.tasks.image.data.info import Normalization

# The paper's recipes. crop_flip: CIFAR's pad-and-crop plus horizontal flip; flip: Tiny-ImageNet's flip only;
# random_resized_crop: the usual ImageNet recipe; none: no augmentation (for controls).
AUGMENTATIONS = ("crop_flip", "flip", "random_resized_crop", "none")


def _to_normalized_float(norm: Normalization) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(norm.mean, norm.std)]


def train_transform(augmentation: str, image_size: int, norm: Normalization, crop_padding: int = 4) -> v2.Compose:
    """The training-time transform for ``augmentation`` (one of AUGMENTATIONS)."""
    if augmentation == "crop_flip":
        steps = [v2.RandomCrop(image_size, padding=crop_padding), v2.RandomHorizontalFlip()]
    elif augmentation == "flip":
        steps = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size), v2.RandomHorizontalFlip()]
    elif augmentation == "random_resized_crop":
        steps = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    elif augmentation == "none":
        steps = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    else:
        raise ValueError(f"dataset.augmentation={augmentation!r} is not known; choose one of {AUGMENTATIONS}")
    return v2.Compose(steps + _to_normalized_float(norm))


def eval_transform(image_size: int, norm: Normalization, resize_ratio: float = 1.0) -> v2.Compose:
    """The evaluation transform: resize the short side to ``image_size / resize_ratio``, center-crop, normalize.

    ``resize_ratio`` 1.0 leaves images already at ``image_size`` untouched (CIFAR); 0.875 is ImageNet's
    Resize(256) + CenterCrop(224).
    """
    resize = round(image_size / resize_ratio)
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)] + _to_normalized_float(norm))
