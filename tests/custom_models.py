"""Model classes a user might bring (``model=custom model._target_=tests.custom_models.<Name>``)."""

from __future__ import annotations

from torch import nn


class TinyNet(nn.Module):
    """A two-layer CNN that takes the class count and the image size, as ``model=custom`` passes them."""

    def __init__(self, num_classes: int, image_size: int, width: int = 8):
        super().__init__()
        self.image_size = image_size
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(width, num_classes)

    def forward(self, images):
        return self.head(self.features(images).flatten(1))


class FlatNet(nn.Module):
    """An MLP over flattened pixels: needs the image size (as ``img_size``) and the channels (``in_chans``)."""

    def __init__(self, num_classes: int, img_size: int, in_chans: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, num_classes))

    def forward(self, images):
        return self.net(images)


class SizeFreeNet(nn.Module):
    """Takes no image size (``model.image_size_arg=null``)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))

    def forward(self, images):
        return self.net(images)


class WrongHeadNet(SizeFreeNet):
    """Ignores the class count: always 5 logits."""

    def __init__(self, num_classes: int):
        super().__init__(5)


NOT_A_MODEL = 3
