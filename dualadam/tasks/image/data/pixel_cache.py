"""Decode image files once and keep the decoded pixels in a cache file next to the data.

    <dataset folder>/.cache/<split>-<key>.pixels

``key`` is a digest of everything the pixels depend on: each file's path (relative to the dataset folder, in
order), size and modification time, the size images are fitted to, and the cache format. A different subset,
an added, removed, renamed or rewritten file gives a different key, so a stale cache is never read; old files
are simply left behind (delete ``.cache/`` at any time).

A cache file is a one-line header, then the raw uint8 pixels [N, H, W, C] in C order:

    DUALADAM-PIXELS v1 <crc32 hex> <N> <H> <W> <C>\\n<pixels>

It is written to a temporary file in the same folder and renamed into place, so it is either complete or
absent; a file that is truncated or fails its CRC-32 anyway (a damaged disk, a hand edit) is decoded again and
rewritten. Reading the 184 MB of CIFAR-10 back takes a fraction of a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib
from pathlib import Path

import numpy as np

from dualadam.atomic_files import atomic_write
from dualadam.tasks.image.data.decoding import decode_images
from dualadam.tasks.image.data.sources import ArrayImages, FileImages

log = logging.getLogger(__name__)

MAGIC = b"DUALADAM-PIXELS v1"
CACHE_FOLDER = ".cache"
_MAX_HEADER_BYTES = 256


def cache_key(paths: list[str], folder: Path, fit_size: int | None) -> str:
    """16 hex digits identifying the decoded pixels of ``paths`` (in order) under ``folder``."""
    digest = hashlib.sha256(f"{MAGIC.decode()}\nfit_size={fit_size}\n".encode())
    prefix = os.path.join(str(folder), "")  # paths below the folder are keyed relative to it (os.path.relpath
    for path in paths:                      # is 10x slower, and this runs over every file at every start)
        stat = os.stat(path)
        name = path[len(prefix):] if path.startswith(prefix) else os.path.abspath(path)
        digest.update(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cache_path(folder: Path, split: str, source: FileImages, fit_size: int | None) -> Path:
    return Path(folder) / CACHE_FOLDER / f"{split}-{cache_key(source.paths, Path(folder), fit_size)}.pixels"


def write_pixels(path: Path, pixels: np.ndarray) -> None:
    """Atomically write uint8 ``pixels`` [N, H, W, C] to ``path`` (temporary file, fsync, rename)."""
    pixels = np.ascontiguousarray(pixels)
    shape = " ".join(str(n) for n in pixels.shape)
    header = MAGIC + f" {zlib.crc32(pixels):08x} {shape}\n".encode()

    def write(file) -> None:
        file.write(header)
        pixels.tofile(file)  # straight from the array: no 150 MB bytes copy

    atomic_write(path, write)


def read_pixels(path: Path, count: int) -> np.ndarray | None:
    """The pixels cached at ``path`` if the file is complete, intact and holds ``count`` images; else None."""
    try:
        with open(path, "rb") as file:
            header = file.readline(_MAX_HEADER_BYTES)
            fields = header.split()
            if len(fields) != 7 or b" ".join(fields[:2]) != MAGIC or int(fields[3]) != count:
                raise ValueError("bad header")
            crc, shape = int(fields[2], 16), tuple(int(n) for n in fields[3:])
            pixels = np.empty(shape, dtype=np.uint8)
            complete = file.readinto(memoryview(pixels).cast("B")) == pixels.nbytes and not file.read(1)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("pixel cache %s is unreadable (%s); decoding the images again", path, error)
        return None
    if not complete or zlib.crc32(pixels) != crc:
        log.warning("pixel cache %s is truncated or corrupted; decoding the images again", path)
        return None
    return pixels


def decoded_with_cache(source: FileImages, folder: Path, split: str, fit_size: int | None = None) -> ArrayImages:
    """``source`` decoded into memory, read from the cache when possible and cached otherwise.

    ``fit_size``: resize and center-crop every image to ``fit_size`` squared (see ``decode_images``). A cache
    that cannot be written (a read-only data folder) only costs the decode next time; it is not an error.
    """
    path = cache_path(folder, split, source, fit_size)
    pixels = read_pixels(path, len(source))
    if pixels is None:
        pixels = decode_images(source.paths, fit_size=fit_size)
        try:
            write_pixels(path, pixels)
        except OSError as error:
            log.warning("could not write the pixel cache %s (%s); the next run decodes again", path, error)
    return ArrayImages(pixels, source.labels, source.classes)
