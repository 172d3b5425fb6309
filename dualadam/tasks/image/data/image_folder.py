"""``dataset=image_folder``: any ImageFolder tree, its settings measured from its own training images.

    <dataset.path>/train/<class>/*.jpg|png|...     required; the classes are the sorted folder names
    <dataset.path>/test/<class>/*  or  val/<class>/*   optional; the evaluation ("test") set, test/ first

Without test/ or val/, a seeded share of each class (``dataset.test_fraction``, drawn with ``data_seed``) is
held out of train/ as the test set. ``dataset.val_size`` then holds a validation split out of the rest, as for
CIFAR (``builder``), and ``train_subset`` subsets what is left.

Measured once and cached in ``<dataset.path>/.cache/`` (keyed like the pixel cache by every file's path, size
and modification time, so an edited tree is measured again):

- the survey of train/: every image's header is opened (an unreadable file fails here, before any work) and
  the median short side is kept: ``dataset.image_size=auto`` is that side;
- the per-channel mean and std (``dataset.normalization=measured``) over a seeded sample of at most
  ``STATS_SAMPLE`` training images (all of them for smaller sets), decoded at their own size.

``dataset.augment=auto`` is pad-crop + flip for images of at most ``SMALL_IMAGE`` pixels (CIFAR's recipe) and
RandomResizedCrop + flip above (ImageNet's, evaluated with Resize(size / 0.875) + CenterCrop). With pad-crop
or none, every image is fitted to ``image_size`` (short side resized, center crop) as it is decoded, so trees
of mixed sizes work on both loaders; the in-memory loader is chosen as for CIFAR (``dataset.loader``).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

from dualadam.atomic_files import atomic_write_json
from dualadam.tasks.image.data.decoding import decode_images, fit_to_size
from dualadam.tasks.image.data.folders import IMAGE_SUFFIXES, scan_image_folder
from dualadam.tasks.image.data.info import NORMALIZATIONS, Normalization
from dualadam.tasks.image.data.pixel_cache import CACHE_FOLDER, cache_key
from dualadam.tasks.image.data.sources import ArrayImages, FileImages, decode_rgb
from dualadam.training.epoch_order import mix_seed

log = logging.getLogger(__name__)

NAME = "image_folder"
AUGMENTS = {"pad_crop": "crop_flip", "random_resized_crop": "random_resized_crop", "none": "none"}
SMALL_IMAGE = 64          # auto augmentation: pad-crop + flip up to this side, RandomResizedCrop above
STATS_SAMPLE = 5000       # images the mean and std are measured on (a seeded sample of larger sets)
EVAL_SPLITS = ("test", "val")   # the first present is the evaluation set
SURVEY_FORMAT = 1


class ImageFolderError(ValueError):
    """The tree or its settings cannot work; the message names the key, the problem and the fix."""


def _fail(key: str, problem: str, fix: str) -> ImageFolderError:
    return ImageFolderError(f"dataset.{key}: {problem}. {fix}")


# --- settings and the tree ------------------------------------------------------------------------------


def check_settings(cfg: DictConfig) -> None:
    """The plain values (no file is opened)."""
    if OmegaConf.is_missing(cfg, "path") or not cfg.get("path"):
        raise _fail("path", "is not set", "Point it at your ImageFolder tree: dataset.path=/data/flowers "
                    "(holding train/<class>/*.jpg, optionally test/ or val/)")
    size = cfg.get("image_size", "auto")
    if size != "auto" and not (isinstance(size, int) and not isinstance(size, bool) and size >= 8):
        raise _fail("image_size", f"{size!r} is not a size", "Use auto (the median short side of the training "
                    "images) or an integer >= 8, e.g. dataset.image_size=224")
    if cfg.get("augment", "auto") not in ("auto", *AUGMENTS):
        raise _fail("augment", f"{cfg.get('augment')!r} is not known", f"Choose one of {['auto', *AUGMENTS]}")
    norm = cfg.get("normalization", "measured")
    if norm != "measured" and norm not in NORMALIZATIONS:
        raise _fail("normalization", f"{norm!r} is not known", "Choose measured (this tree's own mean and std) "
                    f"or a known dataset's published values: {sorted(NORMALIZATIONS)}")
    fraction = cfg.get("test_fraction", 0.2)
    if not (isinstance(fraction, float | int) and not isinstance(fraction, bool) and 0 < fraction < 1):
        raise _fail("test_fraction", f"{fraction!r} is not a fraction", "Use a number in (0, 1), e.g. 0.2")


def tree_root(cfg: DictConfig) -> Path:
    return Path(os.path.expanduser(str(cfg.path)))


def _train_folder(cfg: DictConfig) -> Path:
    root = tree_root(cfg)
    if not root.is_dir():
        raise _fail("path", f"{root.resolve()} is not a folder", "Point dataset.path at an existing ImageFolder "
                    "tree (train/<class>/*.jpg)")
    if not (root / "train").is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())[:8]
        raise _fail("path", f"{root.resolve()} has no train/ folder (it holds {found or 'no folders'})",
                    "Lay the images out as <path>/train/<class>/*.jpg (test/ or val/ beside it are optional)")
    return root / "train"


def _check_class_folders(split_dir: Path) -> None:
    classes = sorted(d for d in split_dir.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise _fail("path", f"{split_dir.resolve()} has {len(classes)} class folder(s); classification needs "
                    "at least 2", "Put each class's images in its own folder: train/<class>/*.jpg")
    for folder in classes:
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file()):
            raise _fail("path", f"class folder {folder.resolve()} holds no images "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))})", "Add its images or remove the folder")


def eval_folder(cfg: DictConfig) -> Path | None:
    """The tree's test/ (else val/) folder, or None: then a share of train/ is held out."""
    for split in EVAL_SPLITS:
        if (tree_root(cfg) / split).is_dir():
            return tree_root(cfg) / split
    return None


# --- cached measurements --------------------------------------------------------------------------------


def _cached_json(folder: Path, name: str, measure) -> dict:
    """``measure()``, kept in ``folder/.cache/name``; a cache that cannot be written only costs a re-measure."""
    path = folder / CACHE_FOLDER / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    result = measure()
    try:
        path.parent.mkdir(exist_ok=True)
        atomic_write_json(path, result, indent=1)
    except OSError as error:
        log.warning("could not cache %s (%s); the next run measures again", path, error)
    return result


def _header_size(path: str) -> tuple[int, int] | str:
    """(width, height) from the file's header, or why it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as error:  # PIL raises many types for a damaged or foreign file
        return f"{type(error).__name__}: {error}"


def survey(cfg: DictConfig) -> dict:
    """Every image's header opened (train/ and test/ or val/; an unreadable file is a config error), and the
    median short side of train/'s images."""
    root = tree_root(cfg)
    train = scan_image_folder(_train_folder(cfg))
    folder = eval_folder(cfg)
    paths = train.paths + ([] if folder is None else scan_image_folder(folder, train.classes).paths)

    def measure() -> dict:
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            sizes = list(pool.map(_header_size, paths, chunksize=256))
        bad = [(p, s) for p, s in zip(paths, sizes) if isinstance(s, str)]
        if bad:
            raise _fail("path", f"{len(bad)} image(s) cannot be read, e.g. {bad[0][0]} ({bad[0][1]})",
                        "Delete or replace the damaged files")
        return {"format": SURVEY_FORMAT, "images": len(paths), "classes": list(train.classes),
                "median_side": int(np.median([min(w, h) for w, h in sizes[:len(train)]]))}

    return _cached_json(root, f"survey-{cache_key(paths, root, None)}.json", measure)


def measured_normalization(cfg: DictConfig, train: FileImages) -> Normalization:
    """Per-channel mean and std of a seeded sample of ``train`` (at most STATS_SAMPLE images), in [0, 1]."""
    root = tree_root(cfg)
    sample = np.sort(np.random.default_rng(0).permutation(len(train))[:STATS_SAMPLE])

    def measure() -> dict:
        paths = [train.paths[i] for i in sample]
        totals, squares, count = np.zeros(3), np.zeros(3), 0
        for start in range(0, len(paths), 512):   # one chunk at a time: bounded memory for large images
            for image in _decoded_each(paths[start:start + 512]):
                pixels = image.reshape(3, -1).astype(np.float64) / 255.0
                totals, squares = totals + pixels.sum(1), squares + (pixels ** 2).sum(1)
                count += pixels.shape[1]
        mean = totals / count
        std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
        return {"images": len(paths), "of": len(train), "mean": mean.round(4).tolist(),
                "std": std.round(4).tolist()}

    stats = _cached_json(root, f"stats-{cache_key([train.paths[i] for i in sample], root, None)}.json", measure)
    return Normalization(tuple(stats["mean"]), tuple(stats["std"]))


def _decoded_each(paths: list[str]) -> list[np.ndarray]:
    """Each file decoded to uint8 [3, H, W] at its own size (sizes may differ), in threads."""
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        return [image.numpy() for image in pool.map(decode_rgb, paths)]


# --- the sources ----------------------------------------------------------------------------------------


class FittedFileImages(FileImages):
    """Image files fitted to ``fit_size`` squared as they are decoded (``decoding.fit_to_size``), so a tree of
    mixed sizes batches, and decodes into one array for the in-memory loader."""

    def __init__(self, paths, labels, classes, fit_size: int):
        super().__init__(paths, labels, classes)
        self.fit_size = fit_size

    def __getitem__(self, index: int):
        image, label = super().__getitem__(index)
        return fit_to_size(image, self.fit_size), label

    def subset(self, indices) -> FittedFileImages:
        chosen = super().subset(indices)
        return FittedFileImages(chosen.paths, chosen.labels, chosen.classes, self.fit_size)

    def decode_all(self, threads: int | None = None) -> ArrayImages:
        return ArrayImages(decode_images(self.paths, fit_size=self.fit_size, threads=threads), self.labels,
                           self.classes)


def held_out_test(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified test split: ``round(fraction * n)`` of each class's n images (at least
    one, and at least one left to train on), drawn with its own stream of ``data_seed``."""
    rng = np.random.default_rng(mix_seed(seed, 3))
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(max(1, round(fraction * len(members))), len(members) - 1)
        chosen.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(chosen))


def _train_and_test(cfg: DictConfig) -> tuple[FileImages, FileImages]:
    """The training images and the evaluation set: test/ or val/, else a held-out share of train/."""
    train = scan_image_folder(_train_folder(cfg))
    folder = eval_folder(cfg)
    if folder is not None:
        return train, scan_image_folder(folder, train.classes)
    small = [name for k, name in enumerate(train.classes) if (train.labels == k).sum() < 2]
    if small:
        raise _fail("path", f"without test/ or val/ a share of each class is held out as the test set, but "
                    f"class(es) {small[:5]} have a single image", "Add images, or add a test/ folder")
    held_out = held_out_test(train.labels, float(cfg.get("test_fraction", 0.2)), cfg.get("data_seed", 0))
    rest = np.setdiff1d(np.arange(len(train)), held_out)
    return train.subset(rest), train.subset(held_out)


def check_image_folder(cfg: DictConfig) -> None:
    """Every check that can fail, before any work: settings, the tree's layout, every image's header."""
    check_settings(cfg)
    train_dir = _train_folder(cfg)
    _check_class_folders(train_dir)
    folder = eval_folder(cfg)
    if folder is not None:
        try:
            scan_image_folder(folder, sorted(d.name for d in train_dir.iterdir() if d.is_dir()))
        except ValueError as error:
            raise _fail("path", str(error), f"Give {folder.name}/ the same class folders as train/") from None
    _train_and_test(cfg)   # a class too small to split
    survey(cfg)


# --- the builder's entry points -------------------------------------------------------------------------


def display_name(cfg: DictConfig) -> str:
    """What runs are named after: ``dataset.display_name``, else the tree's folder name."""
    return str(cfg.get("display_name") or tree_root(cfg).resolve().name)


def resolve_image_folder(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` with everything measured or chosen written in: ``image_size`` (int),
    ``augmentation`` and ``eval_resize_ratio`` (the builder's keys), ``mean``/``std``, and the run's name."""
    check_image_folder(cfg)
    train, _ = _train_and_test(cfg)
    size = cfg.get("image_size", "auto")
    image_size = survey(cfg)["median_side"] if size == "auto" else size
    augment = cfg.get("augment", "auto")
    if augment == "auto":
        augment = "pad_crop" if image_size <= SMALL_IMAGE else "random_resized_crop"
    norm_choice = cfg.get("normalization", "measured")
    norm = (measured_normalization(cfg, train) if norm_choice == "measured"
            else NORMALIZATIONS[norm_choice]["dataset"])
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(resolved):
        resolved.image_size = int(image_size)
        resolved.augmentation = AUGMENTS[augment]
        resolved.eval_resize_ratio = 224 / 256 if augment == "random_resized_crop" else 1.0
        resolved.mean, resolved.std = list(norm.mean), list(norm.std)
        resolved.display_name = display_name(cfg)
    log.info("image_folder %s: %d classes, image_size %d, augment %s, mean %s std %s", resolved.display_name,
             len(train.classes), image_size, augment, norm.mean, norm.std)
    return resolved


def load_image_folder(cfg: DictConfig) -> tuple[FileImages, FileImages]:
    """Train and test sources of a resolved config (``resolve_image_folder``); fitted to ``image_size`` as
    they decode unless the augmentation crops from the full image."""
    train, test = _train_and_test(cfg)
    if cfg.augmentation == "random_resized_crop":
        return train, test
    return tuple(FittedFileImages(s.paths, s.labels, s.classes, cfg.image_size) for s in (train, test))
