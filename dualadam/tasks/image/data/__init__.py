"""Datasets and loaders: CIFAR-10/100, Tiny-ImageNet, ImageNet and a synthetic task, behind one builder.

``build_image_data(cfg.dataset, ...)`` returns an ``ImageData``: the dataset's ``DatasetInfo`` and the train,
train-eval, test and (with ``dataset.val_size``) validation loaders, yielding (normalized float images
[B, C, S, S], int64 labels [B]).
"""

from dualadam.tasks.image.data.builder import DATASET_NAMES, DATASETS, ImageData, build_image_data
from dualadam.tasks.image.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES
from dualadam.tasks.image.data.folders import DatasetNotFoundError
from dualadam.tasks.image.data.info import NORMALIZATIONS, DatasetInfo

__all__ = [
    "CIFAR10_CLASSES", "CIFAR100_CLASSES", "DATASETS", "DATASET_NAMES", "NORMALIZATIONS", "DatasetInfo",
    "DatasetNotFoundError", "ImageData", "build_image_data",
]
