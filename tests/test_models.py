"""Models: every paper architecture builds and runs at its image size with the dataset's classes; timm by
name; parameter counts of the standard CIFAR variants; errors for unknown names."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf
from torch import nn

from dualadam.tasks.image.data import DatasetInfo
from dualadam.tasks.image.models import PAPER_MODELS, build_model, paper_model_names

REPO = Path(__file__).resolve().parents[1]
PAPER_IMAGE_SIZE = {"vit_paper_64_8": 64, "vit_paper_224_16": 224}  # the others: 32


def info(num_classes: int = 7, image_size: int = 32, in_chans: int = 3) -> DatasetInfo:
    return DatasetInfo("test", num_classes, image_size, in_chans, (0.5,) * in_chans, (0.25,) * in_chans)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def paper_model():
    """Each paper model, built once per module for 10 classes at its paper image size."""
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            cache[name] = build_model({"name": name}, info(num_classes=10, image_size=PAPER_IMAGE_SIZE.get(name, 32)))
        return cache[name]

    return get


@pytest.mark.parametrize("name", paper_model_names())
def test_paper_model_runs_at_its_image_size_with_the_datasets_classes(paper_model, name):
    size = PAPER_IMAGE_SIZE.get(name, 32)
    with torch.no_grad():
        logits = paper_model(name).eval()(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("name, expected", [
    ("resnet18_cifar", 11_173_962), ("resnet50_cifar", 23_520_842), ("vgg16_bn_cifar", 14_728_266),
])
def test_cifar_models_have_the_standard_parameter_counts(paper_model, name, expected):
    assert num_params(paper_model(name)) == expected


@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet50_cifar"])
def test_cifar_resnet_has_a_stride_1_stem_without_max_pool(paper_model, name):
    model = paper_model(name)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)


def test_cifar_resnet_keeps_full_resolution_into_the_first_block(paper_model):
    with torch.no_grad():
        features = paper_model("resnet18_cifar").eval().forward_features(torch.randn(1, 3, 32, 32))
    assert features.shape[-1] == 4  # 32 / 8: only the three stride-2 stages downsample


def test_paper_vits_have_the_papers_shape(paper_model):
    for name, patches in (("vit_paper_32_4", 64), ("vit_paper_64_8", 64), ("vit_paper_224_16", 196)):
        model = paper_model(name)
        assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (384, 8, 8)
        assert model.patch_embed.num_patches == patches


def test_paper_vit_follows_the_dataset_image_size_and_warns():
    with pytest.warns(UserWarning, match="building it for test's 64 pixels"):
        model = build_model({"name": "vit_paper_32_4"}, info(image_size=64))
    assert model.patch_embed.num_patches == 256
    with pytest.raises(ValueError, match="multiple of 8"):
        build_model({"name": "vit_paper_64_8"}, info(image_size=36))


def test_vgg_classifier_follows_the_image_size():
    assert build_model({"name": "vgg16_bn_cifar"}, info(image_size=64)).classifier.in_features == 2048


def test_kwargs_reach_the_builder_and_channels_come_from_the_dataset():
    narrow = build_model({"name": "small_cnn", "kwargs": {"width": 8}}, info(in_chans=1))
    assert num_params(narrow) < num_params(build_model({"name": "small_cnn"}, info()))
    assert narrow(torch.randn(2, 1, 16, 16)).shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_any_timm_model_by_name_takes_classes_channels_and_image_size(name):
    model = build_model({"name": name, "kwargs": {"drop_rate": 0.1}}, info(num_classes=5, in_chans=1))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)  # the ViT was built for 32x32, not 224x224


def test_unknown_model_lists_the_paper_models_and_points_to_timm():
    with pytest.raises(ValueError) as error:
        build_model({"name": "resnet18_cifr"}, info())
    message = str(error.value)
    assert all(name in message for name in paper_model_names())
    assert "timm.list_models()" in message and "Did you mean" in message


def test_paper_models_have_no_pretrained_weights():
    with pytest.raises(ValueError, match="model.pretrained=false"):
        build_model({"name": "resnet18_cifar", "pretrained": True}, info())


def test_model_configs_name_a_buildable_model():
    # configs with a `source` are causal LMs for task=llm_finetune (tests/test_llm.py)
    # (and model=custom names the user's own class: tests/test_custom_model.py)
    paths = [p for p in sorted((REPO / "configs" / "model").glob("*.yaml"))
             if "source" not in OmegaConf.load(p) and p.stem != "custom"]
    assert {p.stem for p in paths} >= set(PAPER_MODELS)  # one config per paper model, plus `timm`
    for path in paths:
        cfg = OmegaConf.load(path)
        assert set(cfg) == {"name", "pretrained", "kwargs"} and cfg.pretrained is False
        assert cfg.name in PAPER_MODELS or timm.is_model(cfg.name)
    timm_model = build_model(OmegaConf.load(REPO / "configs" / "model" / "timm.yaml"), info())
    assert timm_model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
