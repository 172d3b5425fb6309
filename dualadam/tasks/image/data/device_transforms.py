"""The paper's augmentation and the normalization, done on whole batches of uint8 images on the device.

Pixels are held as uint8 [N, C, H, W]. A batch is selected, padded, cropped and flipped by three gathers and a
pad, then normalized by one conversion and a multiply-add, so a batch costs a handful of kernel launches
whatever its size, and nothing waits for the host.

The randomness matches torchvision's ``RandomCrop(S, padding=p)`` + ``RandomHorizontalFlip()``: the crop's top
and left offsets into the zero-padded image are uniform on ``0..2p`` (both ends included), and each image is
flipped with probability 1/2. It is drawn for a whole epoch at once, on the CPU, from (seed, epoch) alone
(``draw_epoch_plan``), so it is the same on every device and for any batch a run starts at.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dualadam.training.epoch_order import mix_seed

# What the device path can do. "crop_flip": CIFAR's pad-and-crop + flip; "flip": flip only (Tiny-ImageNet,
# images fitted to the model size beforehand); "none": no augmentation.
DEVICE_AUGMENTATIONS = ("crop_flip", "flip", "none")


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's order and augmentation, indexed by position in the epoch (not by sample)."""

    order: Tensor          # int64 [N]: the sample shown at each position
    tops: Tensor | None    # int64 [N]: crop offsets into the padded image, 0..2p; None without cropping
    lefts: Tensor | None
    flips: Tensor | None   # bool [N]: mirror left-right; None without flipping

    def to(self, device: torch.device) -> EpochPlan:
        def move(t: Tensor | None) -> Tensor | None:
            if t is None or device.type == "cpu":
                return t
            return t.pin_memory().to(device, non_blocking=True)  # one copy per epoch, not per step
        return EpochPlan(move(self.order), move(self.tops), move(self.lefts), move(self.flips))


def draw_epoch_plan(num_samples: int, seed: int, epoch: int, augmentation: str, padding: int) -> EpochPlan:
    """The epoch's permutation (the same one the DataLoader path's sampler draws) and its crops and flips."""
    if augmentation not in DEVICE_AUGMENTATIONS:
        raise ValueError(f"augmentation {augmentation!r} cannot run on the device; choose one of "
                         f"{DEVICE_AUGMENTATIONS} or dataset.loader=dataloader")
    generator = torch.Generator().manual_seed(mix_seed(seed, epoch))
    order = torch.randperm(num_samples, generator=generator)
    tops = lefts = flips = None
    if augmentation == "crop_flip":
        tops, lefts = torch.randint(0, 2 * padding + 1, (2, num_samples), generator=generator)
    if augmentation in ("crop_flip", "flip"):
        flips = torch.randint(0, 2, (num_samples,), generator=generator).bool()
    return EpochPlan(order, tops, lefts, flips)


def gather_augmented(pixels: Tensor, indices: Tensor, tops: Tensor | None, lefts: Tensor | None,
                     flips: Tensor | None, padding: int) -> Tensor:
    """Images ``indices`` of ``pixels`` (uint8 [N, C, H, W]), cropped and flipped: uint8 [B, C, H, W].

    Output pixel (i, j) of image b is pixel (tops[b] + i, lefts[b] + j') of the image zero-padded by
    ``padding``, with j' = W - 1 - j when flipped (torchvision crops, then flips). ``tops``/``lefts`` None: no
    crop; ``flips`` None: no flip. Two gathers (rows, then columns with the flip folded in): cheap on any
    device, and no host sync (no boolean masks, whose size the host would have to read).
    """
    images = pixels.index_select(0, indices)
    if tops is None and flips is None:
        return images
    batch, chans, height, width = images.shape
    if tops is not None:
        images = F.pad(images, (padding, padding, padding, padding))
        rows = tops[:, None] + torch.arange(height, device=images.device)  # [B, H] rows of the padded image
        images = images.gather(2, rows[:, None, :, None].expand(batch, chans, height, images.shape[3]))
    columns = torch.arange(width, device=images.device).expand(batch, width)
    if flips is not None:
        columns = torch.where(flips[:, None], columns.flip(1), columns)
    if lefts is not None:
        columns = columns + lefts[:, None]
    return images.gather(3, columns[:, None, None, :].expand(batch, chans, height, width))


class Normalizer:
    """uint8 [B, C, H, W] -> ``(x / 255 - mean) / std`` [B, C, H, W] in the compute dtype and memory format.

    Computed as ``x * scale + shift`` directly in ``dtype`` (bf16/fp16 under mixed precision: the first layer
    would round its input to that dtype anyway, and it reads half the bytes). The result is laid out in
    ``memory_format`` (channels_last for tensor-core convolutions) by the same conversion.
    """

    def __init__(self, mean, std, *, device: torch.device, dtype: torch.dtype = torch.float32,
                 memory_format: torch.memory_format = torch.contiguous_format):
        mean, std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
        self.scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(device=device, dtype=dtype)
        self.shift = (-mean / std).view(1, -1, 1, 1).to(device=device, dtype=dtype)
        self.dtype, self.memory_format = dtype, memory_format

    def __call__(self, images: Tensor) -> Tensor:
        normalized = images.to(dtype=self.dtype, memory_format=self.memory_format)
        return normalized.mul_(self.scale).add_(self.shift)
