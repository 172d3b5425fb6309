"""What the trainer and the model builder need to know about a dataset, and each dataset's statistics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """The facts a model and a trainer need about a dataset.

    ``image_size`` is the side, in pixels, of the square images the loaders yield (the model input);
    ``mean``/``std`` are the per-channel values the loaders actually normalized with, in [0, 1] pixel units.
    """

    name: str
    num_classes: int
    image_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# Per-pixel statistics of each training set ("dataset"), and the constants the authors' code used ("paper").
# The authors normalized CIFAR-100 with CIFAR-10's constants, and their CIFAR-10 std is the widely copied
# (0.2023, 0.1994, 0.2010), which is not the per-pixel std of CIFAR-10 (that is about 0.247, 0.243, 0.262).
NORMALIZATIONS: dict[str, dict[str, Normalization]] = {
    "cifar10": {
        "dataset": Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        "paper": Normalization((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    },
    "cifar100": {
        "dataset": Normalization((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        "paper": Normalization((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    },
    "tiny_imagenet": {
        "dataset": Normalization((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
        "paper": Normalization((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    },
    "imagenet": {
        "dataset": Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        "paper": Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    },
}


def normalization_for(dataset: str, choice: str) -> Normalization:
    """The normalization ``choice`` ("dataset" or "paper") for ``dataset``; ValueError naming the options."""
    table = NORMALIZATIONS[dataset]
    if choice not in table:
        raise ValueError(f"dataset.normalization={choice!r} is not known for {dataset}; "
                         f"choose one of {sorted(table)}")
    return table[choice]
