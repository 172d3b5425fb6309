"""CIFAR-10 and CIFAR-100 from either torchvision's canonical files or an ImageFolder tree of image files."""

from __future__ import annotations

from pathlib import Path

import torchvision

from dualadam.tasks.image.data.folders import (
    DatasetNotFoundError,
    has_split_folders,
    missing_dataset_message,
    scan_image_folder,
)
from dualadam.tasks.image.data.sources import ArrayImages, ImageSource

# Canonical label order (the order of the label names in the dataset's own meta file). An ImageFolder copy
# is mapped onto it by folder name, so label k means the same class whichever layout the files come in.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl",
    "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
    "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp",
    "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse",
    "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea",
    "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor", "train", "trout",
    "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

_VARIANTS = {
    "cifar10": ("CIFAR-10", torchvision.datasets.CIFAR10, CIFAR10_CLASSES),
    "cifar100": ("CIFAR-100", torchvision.datasets.CIFAR100, CIFAR100_CLASSES),
}


def _not_found(name: str, folder: Path, cause: str = "") -> DatasetNotFoundError:
    title, tv_class, _ = _VARIANTS[name]
    canonical = folder / tv_class.base_folder
    hint = ("Here, `make data` unpacks the shared CIFAR-10 copy (../shared/data/cifar10-jpeg.tar.gz) into "
            "data/cifar10/." if name == "cifar10" else "")
    if cause:
        hint = f"{hint}\n(Loading the canonical files failed: {cause})".strip()
    return DatasetNotFoundError(missing_dataset_message(title, folder, [
        f"torchvision's canonical files: {canonical}/ (downloaded there automatically when "
        "dataset.download=true and the machine is online; torchvision checks their md5 sums)",
        f"ImageFolder: {folder}/train/<class>/*.png|jpg and {folder}/test/<class>/*.png|jpg, with the class "
        "names as folder names",
    ], hint))


def _canonical(name: str, folder: Path, download: bool) -> tuple[ArrayImages, ArrayImages]:
    _, tv_class, _ = _VARIANTS[name]
    try:
        splits = [tv_class(str(folder), train=train, download=download) for train in (True, False)]
    except (RuntimeError, OSError) as error:  # OSError covers URLError: offline download
        raise _not_found(name, folder, f"{type(error).__name__}: {error}") from error
    return tuple(ArrayImages(s.data, s.targets, s.classes) for s in splits)


def load_cifar(name: str, folder: Path, download: bool) -> tuple[ImageSource, ImageSource]:
    """Train and test sources of ``name`` ("cifar10" or "cifar100") from ``folder``.

    An ImageFolder tree (``train/``, ``test/``) is used when present; otherwise torchvision's canonical files,
    downloaded into ``folder`` when missing if ``download`` is true.
    """
    _, tv_class, classes = _VARIANTS[name]
    if has_split_folders(folder, "train", "test"):
        return scan_image_folder(folder / "train", classes), scan_image_folder(folder / "test", classes)
    if not download and not (folder / tv_class.base_folder).is_dir():
        raise _not_found(name, folder)
    return _canonical(name, folder, download)
