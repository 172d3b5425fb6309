"""Decode many image files into one uint8 array, fast.

JPEGs go through torchvision's batched libjpeg-turbo decoder (all of CIFAR-10's 60,000 JPEGs in a few seconds
on 2 cores, against ~20 s for PIL one file at a time); anything else (PNG, BMP, WebP) and any JPEG that
decoder refuses go through PIL, as ``decode_rgb`` does. Both yield the same pixels for the same JPEG (both are
libjpeg-turbo with the default IDCT; ``tests/test_memory_loader.py`` checks it on the real files).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

try:
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # a torchvision that has dropped its decoders: PIL decodes everything
    decode_jpeg = None

_JPEG_MAGIC = b"\xff\xd8"
_CHUNK = 512  # files per task: big enough to amortize the batched decode call, small enough to balance threads
# torchvision 0.29 deprecates its image decoders in favour of TorchCodec (not a dependency here). The warning is
# known and harmless for us; it is silenced only around our own decode calls.
_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"


def _decode_with_pil(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def _decode_chunk(paths: Sequence[str]) -> list[torch.Tensor]:
    """Read and decode ``paths`` to uint8 RGB tensors [3, H, W]."""
    blobs = []
    for path in paths:
        with open(path, "rb") as file:
            blobs.append(file.read())
    images: list[torch.Tensor | None] = [None] * len(blobs)
    jpegs = [i for i, blob in enumerate(blobs) if blob.startswith(_JPEG_MAGIC)] if decode_jpeg else []
    if jpegs:
        try:
            decoded = decode_jpeg([torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in jpegs],
                                  mode=ImageReadMode.RGB)
            for i, image in zip(jpegs, decoded):
                images[i] = image
        except RuntimeError:  # e.g. a CMYK or damaged JPEG somewhere in the chunk: PIL takes the whole chunk
            pass
    return [image if image is not None else _decode_with_pil(blob) for image, blob in zip(images, blobs)]


def fit_to_size(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side to ``size`` (antialiased) and center-crop ``size`` x ``size``: exactly what the
    DataLoader path's ``Resize(size) + CenterCrop(size)`` does to the same uint8 tensor."""
    if image.shape[-2:] == (size, size):
        return image
    return TF.center_crop(TF.resize(image, [size], antialias=True), [size, size])


def decode_images(paths: Sequence[str], fit_size: int | None = None, threads: int | None = None) -> np.ndarray:
    """Decode ``paths`` into one uint8 array [N, H, W, 3] (RGB; grayscale, palette, RGBA and CMYK converted).

    ``fit_size``: fit every image to ``fit_size`` x ``fit_size`` (``fit_to_size``); otherwise all images must
    have the same size. ``threads``: decoding threads (default: one per core; the decoders release the GIL).
    """
    if not paths:
        raise ValueError("there are no images to decode")
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=DeprecationWarning)
        with ThreadPoolExecutor(threads or os.cpu_count()) as pool:
            images = [image for chunk in pool.map(_decode_chunk, chunks) for image in chunk]
    if fit_size is not None:
        images = [fit_to_size(image, fit_size) for image in images]
    shapes = sorted({tuple(image.shape) for image in images})
    if len(shapes) > 1:
        raise ValueError(f"the images under {os.path.dirname(os.path.dirname(paths[0]))} have different sizes "
                         f"(C, H, W) {shapes[:3]}; they cannot be held as one array. Use "
                         "dataset.loader=dataloader (and dataset.preload=false)")
    return torch.stack(images).permute(0, 2, 3, 1).contiguous().numpy()
