"""VGG16 with batch norm, CIFAR style: thirteen 3x3 conv-BN-ReLU layers, five 2x2 max-pools, one linear layer.

timm's VGG cannot express this: its head is a 4096-wide 7x7 ConvMlp (~100M parameters) sized for 224x224
ImageNet inputs. Here the final feature map is flattened into a single linear classifier, as in the authors'
code: 512 features at 32x32 inputs (14,728,266 parameters with 10 classes), 2048 at 64x64.
"""

from __future__ import annotations

import torch
from torch import nn

from dualadam.tasks.image.data.info import DatasetInfo

VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class CifarVGG(nn.Module):
    """VGG over ``layers`` (conv widths, "M" for a max-pool) for square inputs of ``image_size`` pixels."""

    def __init__(self, layers: tuple[int | str, ...], num_classes: int, in_chans: int = 3, image_size: int = 32):
        super().__init__()
        blocks: list[nn.Module] = []
        channels, side = in_chans, image_size
        for layer in layers:
            if layer == "M":
                blocks.append(nn.MaxPool2d(kernel_size=2, stride=2))
                side //= 2
            else:
                blocks += [nn.Conv2d(channels, layer, kernel_size=3, padding=1), nn.BatchNorm2d(layer),
                           nn.ReLU(inplace=True)]
                channels = layer
        if side < 1:
            raise ValueError(f"VGG needs inputs of at least 32x32 pixels, got {image_size}")
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(channels * side * side, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, S, S] -> logits [B, num_classes]."""
        return self.classifier(self.features(images).flatten(1))


def vgg16_bn_cifar(info: DatasetInfo, **kwargs) -> CifarVGG:
    return CifarVGG(VGG16_LAYERS, info.num_classes, info.in_chans, info.image_size, **kwargs)
