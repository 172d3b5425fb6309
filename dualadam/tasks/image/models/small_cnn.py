"""A small CNN for fast CPU tests and CPU-sized studies (about 0.24M parameters at the default width 32)."""

from __future__ import annotations

import torch
from torch import nn

from dualadam.tasks.image.data.info import DatasetInfo


def _conv_bn_relu(in_chans: int, out_chans: int) -> list[nn.Module]:
    return [nn.Conv2d(in_chans, out_chans, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out_chans),
            nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU layers of widths w, 2w, 4w, 4w with two 2x2 max-pools, global average pool, linear."""

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_chans, width),
            *_conv_bn_relu(width, 2 * width), nn.MaxPool2d(2),
            *_conv_bn_relu(2 * width, 4 * width), nn.MaxPool2d(2),
            *_conv_bn_relu(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] (any H, W >= 4) -> logits [B, num_classes]."""
        return self.classifier(self.features(images))


def small_cnn(info: DatasetInfo, width: int = 32) -> SmallCNN:
    return SmallCNN(info.num_classes, info.in_chans, width)
