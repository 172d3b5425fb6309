"""The paper's augmentation and the normalization, done on whole batches of uint8 images on the device.

Pixels are held as uint8 [N, H, W, C] (channel-last: one image row is one contiguous run of bytes). A batch is
cropped and flipped by a single gather from that array, then normalized by a single fused multiply-add, so a
batch costs a handful of kernel launches whatever its size, and nothing waits for the host.

The randomness matches torchvision's ``RandomCrop(S, padding=p)`` + ``RandomHorizontalFlip()``: the crop's top
and left offsets into the zero-padded image are uniform on ``0..2p`` (both ends included), and each image is
flipped with probability 1/2. It is drawn for a whole epoch at once, on the CPU, from (seed, epoch) alone
(``draw_epoch_plan``), so it is the same on every device and for any batch a run starts at.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dualadam.data.loaders import mix_seed

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
    """Images ``indices`` of ``pixels`` (uint8 [N, H, W, C]), cropped and flipped: uint8 [B, H, W, C].

    Output pixel (i, j) of image b is padded-image pixel (tops[b] + i, lefts[b] + j') with j' = W - 1 - j when
    flipped, i.e. source pixel (tops[b] - p + i, lefts[b] - p + j'); outside the image it is 0, the value
    torchvision pads with. ``tops``/``lefts`` None: no crop; ``flips`` None: no flip.
    """
    if tops is None and flips is None:
        return pixels.index_select(0, indices)
    height, width = pixels.shape[1:3]
    rows = torch.arange(height, device=pixels.device).expand(len(indices), height)
    cols = torch.arange(width, device=pixels.device).expand(len(indices), width)
    if flips is not None:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    if tops is None:
        return pixels[indices[:, None, None], rows[:, :, None], cols[:, None, :]]
    rows = rows + (tops - padding)[:, None]
    cols = cols + (lefts - padding)[:, None]
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    images = pixels[indices[:, None, None], rows.clamp(0, height - 1)[:, :, None],
                    cols.clamp(0, width - 1)[:, None, :]]
    return images.mul_(inside[..., None])  # zero the padding (uint8 * bool stays uint8)


class Normalizer:
    """uint8 [B, H, W, C] -> normalized [B, C, H, W] in the compute dtype and memory format.

    ``(x / 255 - mean) / std`` as one fused ``x * scale + shift``; the arithmetic is float32 (the constants keep
    their precision), and the result is handed over in ``dtype`` (bf16/fp16 under mixed precision, so the first
    layer reads half the bytes) and ``memory_format`` (channels_last comes free: it is the pixels' own layout).
    """

    def __init__(self, mean, std, *, device: torch.device, dtype: torch.dtype = torch.float32,
                 memory_format: torch.memory_format = torch.contiguous_format):
        mean, std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
        self.scale = (1.0 / (255.0 * std)).float().view(1, -1, 1, 1).to(device)
        self.shift = (-mean / std).float().view(1, -1, 1, 1).to(device)
        self.dtype, self.memory_format = dtype, memory_format

    def __call__(self, images: Tensor) -> Tensor:
        normalized = torch.addcmul(self.shift, images.permute(0, 3, 1, 2), self.scale)
        return normalized.to(dtype=self.dtype, memory_format=self.memory_format)
