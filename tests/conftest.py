"""Shared fixtures: a training config composed by Hydra and shrunk to run in seconds, and the real CIFAR-10.

As in lightning-hydra-template, tests compose ``configs/train.yaml`` with ``hydra.compose`` and call
``train(cfg)`` directly; only the CLI test goes through ``@hydra.main``.
"""

from __future__ import annotations

import itertools
import tarfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

# The tests' tiny models run 6-10x faster on one thread than on two contended ones (measured on the 2-core
# CI machine); no result depends on it. Subprocess tests start with torch's default.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
CIFAR10_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

# A tiny CNN, one epoch, no W&B, no progress bars; with SMALL_SYNTHETIC a full run takes about a second.
FAST_OVERRIDES = (
    "model=small_cnn",
    "model.kwargs.width=8",
    "trainer.epochs=1",
    "trainer.batch_size=32",
    "trainer.eval_batch_size=64",
    "trainer.num_workers=0",
    "trainer.progress=false",
    "logger.mode=disabled",
    "logger.console=off",
)
SMALL_SYNTHETIC = ("dataset=synthetic", "dataset.train_size=256", "dataset.test_size=128")


def compose_train_config(overrides=(), *, fast: bool = True) -> DictConfig:
    """``configs/train.yaml`` composed by Hydra with ``overrides``. ``fast`` puts FAST_OVERRIDES first, and
    SMALL_SYNTHETIC too unless ``overrides`` choose a dataset."""
    if fast:
        chooses_dataset = any(o.startswith("dataset=") for o in overrides)
        overrides = [*FAST_OVERRIDES, *(() if chooses_dataset else SMALL_SYNTHETIC), *overrides]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture
def make_cfg(tmp_path, isolated_wandb):
    """``make_cfg(*overrides)``: a fast config whose run directory is a fresh folder under ``tmp_path``, for a
    run that W&B keeps away from the user's account."""
    counter = itertools.count()

    def make(*overrides: str, fast: bool = True) -> DictConfig:
        cfg = compose_train_config(overrides, fast=fast)
        with open_dict(cfg):
            cfg.run_dir = str(tmp_path / f"run{next(counter)}")
        return cfg

    return make


@pytest.fixture
def isolated_wandb(tmp_path, monkeypatch):
    """Keep W&B away from the user's settings, credentials and network (also in subprocesses started later)."""
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")


def extract_cifar10_subset(destination: Path, train_per_class: int, test_per_class: int) -> Path:
    """Unpack the first ``train_per_class``/``test_per_class`` images of each class (files ``NNNN.jpg``) of
    the real CIFAR-10 copy in ``../shared`` into ``destination/cifar10/``; returns ``destination``. Skips the
    test when that copy is absent."""
    if not CIFAR10_TARBALL.is_file():  # a plain clone: the tests that need the real images skip, not fail
        pytest.skip(f"needs the real CIFAR-10 copy at {CIFAR10_TARBALL} (../shared/data beside the repository, "
                    "see ../shared/data/README.md)")
    limits = {"train": train_per_class, "test": test_per_class}
    with tarfile.open(CIFAR10_TARBALL) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 3 and int(Path(parts[2]).stem) < limits[parts[0]]:
                tar.extract(member, destination / "cifar10", filter="data")
    return destination


@pytest.fixture(scope="session")
def cifar10_subset_root(tmp_path_factory) -> Path:
    """A data root holding ``cifar10/{train,test}/<class>/*.jpg``: 600 train and 200 test images per class."""
    return extract_cifar10_subset(tmp_path_factory.mktemp("data"), train_per_class=600, test_per_class=200)
