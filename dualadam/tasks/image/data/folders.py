"""ImageFolder-layout datasets (``<split>/<class>/<image>``): CIFAR as loose files, Tiny-ImageNet, ImageNet; and
the error raised when a dataset's files are missing, with a message that says where they must go."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dualadam.tasks.image.data.sources import FileImages


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the config says; the message names the folder and the layouts."""


def missing_dataset_message(title: str, folder: Path, layouts: Sequence[str], hint: str = "") -> str:
    """A message naming ``folder`` (absolute), the accepted ``layouts``, how to change the root, and ``hint``."""
    lines = [f"{title} was not found in {folder.resolve()}.",
             "Create that folder and put the files there in one of these layouts:"]
    lines += [f"  - {layout}" for layout in layouts]
    lines.append("The folder is <root>/" + folder.name + ", where <root> is `dataset.root` "
                 "(default: $DUALADAM_DATA, else ./data); override it with dataset.root=/path or "
                 "DUALADAM_DATA=/path.")
    if hint:
        lines.append(hint)
    return "\n".join(lines)


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def scan_image_folder(split_dir: Path, classes: Sequence[str] | None = None) -> FileImages:
    """The images under ``split_dir/<class>/`` (searched recursively), labelled by their class folder.

    With ``classes`` given, label k is ``classes[k]`` and the folder names must be exactly those classes
    (this is how CIFAR keeps its canonical label order); otherwise the classes are the sorted folder names.
    """
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if classes is None:
        classes = found
    elif set(found) != set(classes):
        raise ValueError(f"{split_dir} has class folders {found} but this dataset's classes are "
                         f"{list(classes)}; rename the folders to match")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = _images_under(split_dir / name)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"{split_dir} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return FileImages(paths, labels, classes)


def has_split_folders(folder: Path, *splits: str) -> bool:
    return all((folder / split).is_dir() for split in splits)


def _tiny_imagenet_raw_val(val_dir: Path, classes: Sequence[str]) -> FileImages:
    """The val split as Tiny-ImageNet ships it: ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``."""
    index = {name: k for k, name in enumerate(classes)}
    paths, labels = [], []
    for line in (val_dir / "val_annotations.txt").read_text().splitlines():
        if line.strip():
            filename, wnid = line.split("\t")[:2]
            paths.append(val_dir / "images" / filename)
            labels.append(index[wnid])
    return FileImages(paths, labels, classes)


def load_tiny_imagenet(folder: Path) -> tuple[FileImages, FileImages]:
    """Tiny-ImageNet-200 from ``folder``: ``train/<wnid>/**.JPEG`` and ``val`` either re-laid out as
    ``val/<wnid>/*.JPEG`` or as shipped (``val/images/`` + ``val/val_annotations.txt``)."""
    if not has_split_folders(folder, "train", "val"):
        raise DatasetNotFoundError(missing_dataset_message("Tiny-ImageNet", folder, [
            "train/<wnid>/images/*.JPEG and val/images/*.JPEG + val/val_annotations.txt "
            "(tiny-imagenet-200.zip unpacked as is, its contents moved up one level)",
            "train/<wnid>/**/*.JPEG and val/<wnid>/*.JPEG (ImageFolder layout)",
        ]))
    train = scan_image_folder(folder / "train")
    if (folder / "val" / "val_annotations.txt").is_file():
        return train, _tiny_imagenet_raw_val(folder / "val", train.classes)
    return train, scan_image_folder(folder / "val", train.classes)


def load_imagenet(folder: Path) -> tuple[FileImages, FileImages]:
    """ImageNet-1k from ``folder``: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``."""
    if not has_split_folders(folder, "train", "val"):
        raise DatasetNotFoundError(missing_dataset_message("ImageNet", folder, [
            "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (ImageFolder layout; the validation images sorted "
            "into class folders, e.g. with the devkit's ground-truth labels)",
        ]))
    train = scan_image_folder(folder / "train")
    return train, scan_image_folder(folder / "val", train.classes)
