"""``build_model``: the paper's architectures by name (a data table), and any other name from timm."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import timm
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dualadam.tasks.image.data.info import DatasetInfo
from dualadam.tasks.image.models.cifar_resnet import resnet18_cifar, resnet50_cifar
from dualadam.tasks.image.models.custom import build_custom_model
from dualadam.tasks.image.models.small_cnn import small_cnn
from dualadam.tasks.image.models.vgg import vgg16_bn_cifar
from dualadam.tasks.image.models.vit import vit_paper_32_4, vit_paper_64_8, vit_paper_224_16


@dataclass(frozen=True)
class PaperModel:
    build: Callable[..., nn.Module]  # (info, **kwargs) -> model
    description: str


PAPER_MODELS: dict[str, PaperModel] = {
    "resnet18_cifar": PaperModel(resnet18_cifar, "ResNet-18, 3x3 stride-1 stem, no max-pool (timm ResNet)"),
    "resnet50_cifar": PaperModel(resnet50_cifar, "ResNet-50, 3x3 stride-1 stem, no max-pool (timm ResNet)"),
    "vgg16_bn_cifar": PaperModel(vgg16_bn_cifar, "VGG16 with batch norm and a single linear classifier"),
    "vit_paper_32_4": PaperModel(vit_paper_32_4, "ViT embed 384, depth 8, 8 heads, 4px patches (CIFAR)"),
    "vit_paper_64_8": PaperModel(vit_paper_64_8, "ViT embed 384, depth 8, 8 heads, 8px patches (Tiny-ImageNet)"),
    "vit_paper_224_16": PaperModel(vit_paper_224_16, "ViT embed 384, depth 8, 8 heads, 16px patches (ImageNet)"),
    "small_cnn": PaperModel(small_cnn, "not in the paper: a 4-layer CNN for fast CPU tests and studies"),
}


def paper_model_names() -> list[str]:
    """The names ``build_model`` builds itself; any other name is looked up in timm."""
    return list(PAPER_MODELS)


def unknown_model_problem(name) -> str | None:
    """None for a paper model or a timm model name; otherwise why not, with the closest valid names."""
    if name in PAPER_MODELS or (isinstance(name, str) and timm.is_model(name)):
        return None
    close = difflib.get_close_matches(str(name), paper_model_names() + timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean one of {close}?" if close else ""
    return (f"unknown model {str(name)!r}: not one of the paper's models {paper_model_names()} and not a "
            f"timm model (see timm.list_models(), e.g. timm.list_models('resnet*')).{hint}")


def _timm_model(name: str, info: DatasetInfo, pretrained: bool, kwargs: dict) -> nn.Module:
    args = dict(pretrained=pretrained, num_classes=info.num_classes, in_chans=info.in_chans, **kwargs)
    if "img_size" in kwargs:
        return timm.create_model(name, **args)
    try:  # models with a fixed token grid or window layout (ViTs, Swin...) take the input size
        return timm.create_model(name, img_size=info.image_size, **args)
    except TypeError as error:  # convnets do not accept img_size, and do not need it
        if "img_size" not in str(error):
            raise
        return timm.create_model(name, **args)


def build_model(model_cfg: DictConfig | Mapping, info: DatasetInfo) -> nn.Module:
    """The model ``model_cfg.name`` for ``info``'s classes, channels and image size (or, with a ``_target_``,
    your own model: ``models.custom``).

    ``model_cfg.kwargs`` go to the paper model's builder or to ``timm.create_model``;
    ``model_cfg.pretrained`` loads timm weights (there are none for the paper's models).
    """
    cfg = model_cfg if isinstance(model_cfg, DictConfig) else OmegaConf.create(dict(model_cfg))
    if "_target_" in cfg.keys():   # model=custom: your own class by import path (keys(): even if ???)
        return build_custom_model(cfg, info)
    name, pretrained = cfg.get("name"), bool(cfg.get("pretrained", False))
    kwargs = OmegaConf.to_container(cfg.kwargs) if cfg.get("kwargs") else {}
    if name in PAPER_MODELS:
        if pretrained:
            raise ValueError(f"model.pretrained=true: there are no pretrained weights for {name}; "
                             "set model.pretrained=false")
        return PAPER_MODELS[name].build(info, **kwargs)
    problem = unknown_model_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return _timm_model(name, info, pretrained, kwargs)
