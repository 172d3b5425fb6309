"""``model=custom model._target_=...``: a user's own model class, built by Hydra for the dataset."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from dualadam.tasks import validate_config
from dualadam.tasks.image.data.info import DatasetInfo
from dualadam.tasks.image.models import build_model
from dualadam.tasks.image.models.custom import CustomModelError
from dualadam.train import train
from dualadam.training.run_directory import run_name
from dualadam.training.validation import ConfigError
from tests import custom_models
from tests.conftest import CONFIG_DIR, FAST_OVERRIDES, SMALL_SYNTHETIC, compose_train_config

# The tests' fast settings without their model (model=small_cnn, model.kwargs.width=8)
FAST_WITHOUT_MODEL = [o for o in FAST_OVERRIDES if not o.startswith("model")] + list(SMALL_SYNTHETIC)
INFO = DatasetInfo("flowers", num_classes=3, image_size=12, in_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3)


def custom(target: str, **overrides):
    cfg = OmegaConf.load(CONFIG_DIR / "model" / "custom.yaml")
    return OmegaConf.merge(cfg, {"_target_": target, **overrides})


def test_the_class_gets_num_classes_the_image_size_and_kwargs():
    model = build_model(custom("tests.custom_models.TinyNet", kwargs={"width": 5}), INFO)
    assert isinstance(model, custom_models.TinyNet) and model.image_size == 12 and model.head.in_features == 5
    assert model(torch.zeros(4, 3, 12, 12)).shape == (4, 3)
    assert model.training   # the logits check leaves the model in training mode


def test_the_size_arguments_can_be_renamed_or_left_out():
    flat = build_model(custom("tests.custom_models.FlatNet", image_size_arg="img_size", in_chans_arg="in_chans"),
                       INFO)
    assert flat.net[1].in_features == 3 * 12 * 12
    assert isinstance(build_model(custom("tests.custom_models.SizeFreeNet", image_size_arg=None), INFO),
                      custom_models.SizeFreeNet)


def test_building_draws_exactly_what_constructing_the_class_draws():
    torch.manual_seed(0)
    built = build_model(custom("tests.custom_models.TinyNet"), INFO)
    next_draw = torch.rand(1)
    torch.manual_seed(0)
    direct = custom_models.TinyNet(num_classes=3, image_size=12)
    assert torch.equal(torch.rand(1), next_draw)   # the logits check drew nothing
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), direct.state_dict().values()))


@pytest.mark.parametrize("target, message", [
    ("tests.custom_models.NoSuchNet", "does not import"),
    ("no_such_package.Net", "does not import"),
    ("tests.custom_models.NOT_A_MODEL", "is a int, not a class or function"),
])
def test_a_target_that_does_not_import_fails_at_validation(target, message):
    cfg = compose_train_config([*FAST_WITHOUT_MODEL, "model=custom", f"model._target_={target}"], fast=False)
    with pytest.raises(ConfigError, match=f"model._target_='{target}' {message}"):
        validate_config(cfg)


def test_a_missing_target_says_what_to_set():
    with pytest.raises(ConfigError, match="model._target_ is not set: model=custom needs your model's import path"):
        validate_config(compose_train_config([*FAST_WITHOUT_MODEL, "model=custom"], fast=False))


def test_a_model_without_num_classes_logits_fails_before_training():
    with pytest.raises(CustomModelError, match=r"output of shape \[2, 5\], but the task needs \[2, 3\] logits"):
        build_model(custom("tests.custom_models.WrongHeadNet", image_size_arg=None), INFO)


def test_a_model_that_rejects_the_image_size_says_how_to_leave_it_out():
    with pytest.raises(CustomModelError, match="model.image_size_arg=null"):
        build_model(custom("tests.custom_models.SizeFreeNet"), INFO)


def test_a_custom_model_trains_end_to_end_and_names_the_run_after_its_class(make_cfg):
    cfg = make_cfg(*FAST_WITHOUT_MODEL, "model=custom", "model._target_=tests.custom_models.TinyNet",
                   "+model.kwargs.width=4", fast=False)
    assert run_name(cfg).startswith("dualadam-TinyNet-synthetic-seed42-")
    validate_config(cfg)
    assert train(cfg)["status"] == "completed"


def test_timm_names_keep_working():
    cfg = compose_train_config([*FAST_WITHOUT_MODEL, "model=timm", "model.name=resnet10t"], fast=False)
    validate_config(cfg)
    assert build_model(cfg.model, INFO)(torch.zeros(2, 3, 12, 12)).shape == (2, 3)
