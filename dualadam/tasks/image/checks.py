"""The image task's config checks (``dataset``, ``model``), run before anything is built.

The one home of each image rule: ``validate_config`` calls :func:`check_image_config` through the task
registry, and ``build_image_data`` calls :func:`check_dataset` on the config it is handed directly.
"""

from __future__ import annotations

from omegaconf import DictConfig

from dualadam.training.validation import ConfigError, check, check_choice, is_int, is_number

DATASET_INTS = {"num_classes": 1, "image_size": 1, "train_size": 1, "test_size": 1, "in_chans": 1,
                "crop_padding": 0, "data_seed": 0}          # key: smallest valid value
DATASET_OPTIONAL_SIZES = ("train_subset", "test_subset", "train_eval_size")
DATASET_BOOLS = ("download", "preload")


def check_dataset_values(dataset: DictConfig) -> None:
    """The image datasets' plain values, each where the dataset has it."""
    for key, least in DATASET_INTS.items():
        if key in dataset and not (key == "image_size" and dataset[key] == "auto"):  # auto: image_folder
            check(is_int(dataset[key]) and dataset[key] >= least, f"dataset.{key}", dataset[key],
                  f"an integer >= {least}")
    for key in DATASET_OPTIONAL_SIZES:
        if dataset.get(key) is not None:
            check(is_int(dataset[key]) and dataset[key] >= 1, f"dataset.{key}", dataset[key],
                  "null (all images) or an integer number of images >= 1")
    val_size = dataset.get("val_size")
    check(val_size is None or (is_int(val_size) and val_size >= 1), "dataset.val_size", val_size,
          "null (no validation split) or a number of training images to hold out, e.g. 5000")
    for key in DATASET_BOOLS:
        if key in dataset:
            check(isinstance(dataset[key], bool), f"dataset.{key}", dataset[key], "true or false")
    if "noise" in dataset:
        check(is_number(dataset.noise) and dataset.noise >= 0, "dataset.noise", dataset.noise, "a number >= 0")
    if "memory_budget_gb" in dataset:
        check(is_number(dataset.memory_budget_gb) and dataset.memory_budget_gb >= 0, "dataset.memory_budget_gb",
              dataset.memory_budget_gb, "a number of GB >= 0")


def check_dataset_choices(dataset: DictConfig) -> None:
    """Names only the data modules know (they import torchvision and PIL)."""
    from dualadam.tasks.image.data.builder import DATASET_NAMES
    from dualadam.tasks.image.data.info import NORMALIZATIONS
    from dualadam.tasks.image.data.memory import LOADERS
    from dualadam.tasks.image.data.transforms import AUGMENTATIONS

    check_choice("dataset.name", dataset.name, DATASET_NAMES, "dataset")
    if dataset.name == "image_folder":
        from dualadam.tasks.image.data.image_folder import ImageFolderError, check_image_folder

        try:
            check_image_folder(dataset)   # its settings, the tree's layout, every image readable
        except ImageFolderError as error:
            raise ConfigError(str(error)) from None
    check_choice("dataset.loader", dataset.get("loader") or "dataloader", LOADERS, "loader")
    if dataset.get("augmentation") is not None:
        check_choice("dataset.augmentation", dataset.augmentation, AUGMENTATIONS, "augmentation")
    if dataset.get("normalization") is not None and dataset.name in NORMALIZATIONS:
        check_choice("dataset.normalization", dataset.normalization, NORMALIZATIONS[dataset.name], "normalization")


def check_dataset(dataset: DictConfig) -> None:
    check_dataset_values(dataset)
    check_dataset_choices(dataset)


def check_model_values(model: DictConfig) -> None:
    check(isinstance(model.get("pretrained", False), bool), "model.pretrained", model.get("pretrained"),
          "true or false")
    kwargs = model.get("kwargs")
    check(kwargs is None or isinstance(kwargs, DictConfig), "model.kwargs", kwargs,
          "a mapping of the model constructor's arguments, e.g. {drop_path_rate: 0.1}")


def check_model_name(key: str, name: str) -> None:
    from dualadam.tasks.image.models import unknown_model_problem

    problem = unknown_model_problem(name)  # the model registry is the one judge of a model name
    if problem is not None:
        raise ConfigError(f"{key}: {problem}")


def check_image_config(cfg: DictConfig) -> None:
    """``cfg.dataset`` and ``cfg.model``: plain values first, then the names that need the registries."""
    check_dataset_values(cfg.dataset)
    check_model_values(cfg.model)
    check_dataset_choices(cfg.dataset)
    if "_target_" in cfg.model.keys():   # keys(): also when it is still ??? (missing)
        from dualadam.tasks.image.models.custom import CustomModelError, check_custom_model

        try:
            check_custom_model(cfg.model)
        except CustomModelError as error:
            raise ConfigError(str(error)) from None
    else:
        check_model_name("model.name", cfg.model.name)


def holds_validation_split(cfg: DictConfig) -> bool:
    """``dataset.val_size`` holds training images out (``data/builder.py`` says which)."""
    return cfg.dataset.get("val_size") is not None
