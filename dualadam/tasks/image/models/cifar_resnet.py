"""The CIFAR ResNets of the paper: timm's ResNet with a 3x3 stride-1 stem and no max-pool.

On 32x32 inputs the ImageNet stem (7x7 stride-2 conv + stride-2 max-pool) would shrink the image to 8x8
before the first block; the CIFAR variant keeps the full resolution into ``layer1``. With 10 classes,
``resnet18_cifar`` has 11,173,962 parameters and ``resnet50_cifar`` 23,520,842, the standard CIFAR counts.
"""

from __future__ import annotations

from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from dualadam.tasks.image.data.info import DatasetInfo


def _cifar_resnet(block: type[nn.Module], layers: tuple[int, ...], info: DatasetInfo, **kwargs) -> ResNet:
    model = ResNet(block, layers, num_classes=info.num_classes, in_chans=info.in_chans, **kwargs)
    stem_width = model.conv1.out_channels
    model.conv1 = nn.Conv2d(info.in_chans, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as timm inits convs
    model.maxpool = nn.Identity()
    for feature in model.feature_info:  # the stem no longer downsamples 4x
        feature["reduction"] = max(1, feature["reduction"] // 4)
    return model


def resnet18_cifar(info: DatasetInfo, **kwargs) -> ResNet:
    return _cifar_resnet(BasicBlock, (2, 2, 2, 2), info, **kwargs)


def resnet50_cifar(info: DatasetInfo, **kwargs) -> ResNet:
    return _cifar_resnet(Bottleneck, (3, 4, 6, 3), info, **kwargs)
