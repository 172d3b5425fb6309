"""Unpack an image-folder tarball (such as ../shared/data/cifar10-jpeg.tar.gz) into a dataset folder.

    python -m dualadam.tasks.image.data.prepare                  # the shared CIFAR-10 copy into $DUALADAM_DATA/cifar10
    python -m dualadam.tasks.image.data.prepare --tarball other.tar.gz --dest data/name --per-class 100

The archive is checked against its published sha256, read in one streaming pass, and unpacked into a
temporary folder that is renamed into place at the end, so an interrupted run never leaves a folder that
looks complete. ``per_class`` keeps only the first N images of each class of each split (for CI subsets).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path, PurePosixPath

# The shared JPEG copy of CIFAR-10 (see ../shared/data/README.md), relative to the repository root.
SHARED_CIFAR10_TARBALL = Path("../shared/data/cifar10-jpeg.tar.gz")
SHARED_CIFAR10_SHA256 = "d34c68f61cca57aa9144c8f25bda427abb9921bd642d5857a2fc1a6b4416f965"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _split_and_class(name: str) -> tuple[str, str] | None:
    """("train", "bird") for "train/bird/0338.jpg"; None for folders and anything not <split>/<class>/<file>."""
    parts = PurePosixPath(name).parts
    if len(parts) != 3 or ".." in parts or PurePosixPath(name).is_absolute():
        return None
    return parts[0], parts[1]


def unpack_image_folder_tarball(tarball: Path, dest: Path, per_class: int | None = None,
                                expected_sha256: str | None = None) -> Counter:
    """Unpack ``<split>/<class>/<image>`` members of ``tarball`` into ``dest``; returns the count per
    (split, class) found in the archive (all of them, also when ``per_class`` keeps fewer)."""
    tarball, dest = Path(tarball), Path(dest)
    if expected_sha256 and sha256_of(tarball) != expected_sha256:
        raise ValueError(f"{tarball} does not have the published sha256 {expected_sha256}; re-copy it")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    found: Counter = Counter()
    with tarfile.open(tarball, "r|*") as archive:  # streaming: one pass over the compressed file
        for member in archive:
            key = _split_and_class(member.name)
            if key is None or not member.isfile():
                continue
            found[key] += 1
            if per_class is None or found[key] <= per_class:
                target = partial.joinpath(*PurePosixPath(member.name).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
    if dest.exists():
        shutil.rmtree(dest)
    partial.rename(dest)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tarball", type=Path, default=None,
                        help=f"default: the shared CIFAR-10 copy, {SHARED_CIFAR10_TARBALL} (sha256 checked)")
    parser.add_argument("--dest", type=Path, default=None,
                        help="the dataset folder; default $DUALADAM_DATA/cifar10, else data/cifar10")
    parser.add_argument("--per-class", type=int, default=None, help="keep only N images per class and split")
    parser.add_argument("--sha256", default=None, help="refuse an archive whose sha256 differs")
    parser.add_argument("--force", action="store_true", help="unpack again even if dest already has train/")
    parser.add_argument("--if-available", action="store_true",
                        help="no archive is not an error: say how the data can be had instead (make demo)")
    args = parser.parse_args(argv)
    if args.tarball is None:
        args.tarball, args.sha256 = SHARED_CIFAR10_TARBALL, args.sha256 or SHARED_CIFAR10_SHA256
    dest = args.dest or Path(os.environ.get("DUALADAM_DATA") or "data") / "cifar10"
    if (dest / "train").is_dir() and not args.force:
        print(f"{dest} already holds train/; nothing to do (--force unpacks again)")
        return
    if not args.tarball.is_file():
        how = (f"no archive at {args.tarball}. To get CIFAR-10: online, the run downloads torchvision's canonical "
               f"files into {dest} (dataset.download=true, the default); offline, put them there yourself, or "
               f"an ImageFolder copy as {dest}/train/<class>/*.jpg and {dest}/test/<class>/*.jpg, or pass "
               "--tarball /path/to/archive.tar.gz")
        if args.if_available:
            print(how)
            return
        raise SystemExit(how)
    found = unpack_image_folder_tarball(args.tarball, dest, args.per_class, args.sha256)
    splits = Counter()
    for (split, _), count in found.items():
        splits[split] += count
    kept = f" (kept {args.per_class} per class)" if args.per_class else ""
    print(f"unpacked {args.tarball} into {dest}: " + ", ".join(f"{s} {n} images" for s, n in splits.items()) + kept)


if __name__ == "__main__":
    main()
