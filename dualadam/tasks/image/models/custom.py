"""``model=custom model._target_=my_pkg.MyNet``: your own model class (or factory function), by import path.

It is built with ``hydra.utils.instantiate`` as ``my_pkg.MyNet(num_classes=K, image_size=S, **model.kwargs)``:

- ``num_classes``: the dataset's class count, always passed;
- ``image_size``: the side of the square input images, passed under the name ``model.image_size_arg``
  (default ``image_size``; e.g. ``img_size`` for timm-style models; null: not passed, for a model that does
  not take it); ``model.in_chans_arg`` likewise passes the channel count (default null: not passed);
- ``model.kwargs``: anything else (nested ``_target_`` nodes are instantiated too, as Hydra does).

Checked before training: the target imports (at config validation), and the built model maps a batch of
``[2, C, S, S]`` images to ``[2, num_classes]`` logits (one forward pass without gradients, in eval mode, on
the CPU, so no random state is consumed and the model's training mode is restored).
"""

from __future__ import annotations

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dualadam.tasks.image.data.info import DatasetInfo


class CustomModelError(ValueError):
    """The custom model cannot be built or does not fit the task; the message says which key and the fix."""


def _target(cfg: DictConfig) -> str:
    if OmegaConf.is_missing(cfg, "_target_") or not cfg.get("_target_"):
        raise CustomModelError("model._target_ is not set: model=custom needs your model's import path, e.g. "
                               "model._target_=my_pkg.models.MyNet (a class or a function returning an nn.Module; "
                               "its module must be importable: installed, or on PYTHONPATH)")
    return str(cfg._target_)


def check_custom_model(cfg: DictConfig) -> None:
    """The target imports and is callable, and the size arguments are names or null."""
    target = _target(cfg)
    try:
        built = get_object(target)
    except Exception as error:   # ImportError, AttributeError, or whatever the module raises on import
        raise CustomModelError(f"model._target_={target!r} does not import ({type(error).__name__}: {error}). "
                               "Fix the dotted path (package.module.ClassName) or make its package importable "
                               "(pip install it, or add its folder to PYTHONPATH)") from None
    if not callable(built):
        raise CustomModelError(f"model._target_={target!r} is a {type(built).__name__}, not a class or function "
                               "that builds an nn.Module")
    for key in ("image_size_arg", "in_chans_arg"):
        value = cfg.get(key)
        if value is not None and not (isinstance(value, str) and value.isidentifier()):
            raise CustomModelError(f"model.{key}={value!r} is invalid: expected the constructor argument's name "
                                   f"(e.g. image_size) or null to not pass it")


def build_custom_model(cfg: DictConfig, info: DatasetInfo) -> nn.Module:
    """``cfg._target_`` instantiated for ``info``, and checked to give ``info.num_classes`` logits."""
    check_custom_model(cfg)
    sizes = {"num_classes": info.num_classes}
    if cfg.get("image_size_arg", "image_size"):
        sizes[cfg.get("image_size_arg", "image_size")] = info.image_size
    if cfg.get("in_chans_arg"):
        sizes[cfg.in_chans_arg] = info.in_chans
    kwargs = OmegaConf.to_container(cfg.kwargs, resolve=True) if cfg.get("kwargs") else {}
    try:
        model = instantiate({"_target_": cfg._target_, **kwargs}, **sizes)
    except Exception as error:
        raise CustomModelError(f"model._target_={cfg._target_!r} could not be built with {sorted(sizes)} and "
                               f"model.kwargs {sorted(kwargs)}: {error}. If it does not take an argument, set "
                               "model.image_size_arg=null (or the name it uses, e.g. img_size)") from error
    if not isinstance(model, nn.Module):
        raise CustomModelError(f"model._target_={cfg._target_!r} returned a {type(model).__name__}, not an "
                               "nn.Module")
    _check_logits(model, info, str(cfg._target_))
    return model


def _check_logits(model: nn.Module, info: DatasetInfo, target: str) -> None:
    was_training = model.training
    images = torch.zeros(2, info.in_chans, info.image_size, info.image_size)
    try:
        with torch.no_grad():
            logits = model.eval()(images)
    except Exception as error:
        raise CustomModelError(f"model._target_={target!r} failed on a batch of {list(images.shape)} images "
                               f"({type(error).__name__}: {error}); the dataset gives {info.image_size}px "
                               f"images with {info.in_chans} channels (dataset.image_size sets the size)") from error
    finally:
        model.train(was_training)
    shape = tuple(getattr(logits, "shape", ()))
    if shape != (2, info.num_classes):
        raise CustomModelError(f"model._target_={target!r} maps a batch of 2 images to an output of shape "
                               f"{list(shape)}, but the task needs [2, {info.num_classes}] logits "
                               f"({info.num_classes} classes in {info.name}): end the model with "
                               "nn.Linear(features, num_classes) using the num_classes it is given")
