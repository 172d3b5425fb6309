"""Every optimizer config has a declared search space (``configs/search_space/<optimizer>.yaml``) that loads,
that Optuna's quasi-random sampler draws from within its bounds, and whose draws compose into a training config
that builds the optimizer with the drawn values."""

from __future__ import annotations

import optuna
import pytest
import torch
from omegaconf import OmegaConf

from dualadam.compare.jobs import Job
from dualadam.compare.search import make_sampler
from dualadam.compare.search_space import load_search_space, training_values
from dualadam.training.optimizers import build_optimizer
from tests.conftest import CONFIG_DIR, compose_train_config

OPTIMIZERS = sorted(p.stem for p in (CONFIG_DIR / "optimizer").glob("*.yaml"))
TOTAL_STEPS = 1000


def test_every_optimizer_config_has_a_search_space_file():
    spaces = {p.stem for p in (CONFIG_DIR / "search_space").glob("*.yaml")}
    assert set(OPTIMIZERS) - spaces == set(), "an optimizer config without configs/search_space/<name>.yaml"
    assert spaces - set(OPTIMIZERS) == set(), "a search space for no optimizer config"


def quasi_random_draws(name: str, n: int) -> list[dict[str, float]]:
    """``n`` trials' parameters as the tuning stage draws them: QMC (Sobol) over the declared distributions."""
    space = load_search_space(CONFIG_DIR, name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler({"sampler": "quasi_random", "seed": 0}, 0))
    draws = []
    for _ in range(n):
        trial = study.ask({p.name: p.distribution for p in space.values()})
        study.tell(trial, 0.0)
        draws.append(trial.params)
    return draws


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_search_space_searches_the_lr_on_a_log_scale_and_samples_within_its_bounds(name):
    space = load_search_space(CONFIG_DIR, name)
    assert space["lr"].key == "optimizer.lr" and space["lr"].log
    for params in quasi_random_draws(name, 4):
        assert set(params) == set(space)
        for p in space.values():
            assert p.low <= params[p.name] <= p.high


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_drawn_trial_composes_into_a_config_that_builds_the_optimizer_with_its_values(name):
    """The job file the protocol writes for a trial (``Job.file_text``) sets keys that exist in the composed
    config of that optimizer, and the optimizer is built with the drawn lr and weight decay."""
    space = load_search_space(CONFIG_DIR, name)
    values = training_values(space, quasi_random_draws(name, 2)[1], TOTAL_STEPS)
    cfg = compose_train_config([f"optimizer={name}"])
    for key in values:
        assert OmegaConf.select(cfg, key) is not None, f"{key} (searched for {name}) is not a training key"
    job_file = OmegaConf.create(Job("t", name, 0, values).file_text())
    assert OmegaConf.to_container(job_file.pop("defaults")) == [{"override /optimizer": name}]
    cfg = OmegaConf.merge(cfg, job_file)
    optimizer = build_optimizer(cfg.optimizer, torch.nn.Linear(3, 2))
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(values["optimizer.lr"])
    if "optimizer.weight_decay" in values:
        assert group["weight_decay"] == pytest.approx(values["optimizer.weight_decay"])


def test_weight_decay_is_searched_exactly_for_the_optimizers_that_decouple_it():
    """SGD and Adam apply weight decay as L2 in the gradient: their searched lr alone is the fair budget."""
    coupled = {"sgd", "adam", "adam_matched_warmup"}
    for name in OPTIMIZERS:
        assert ("weight_decay" in load_search_space(CONFIG_DIR, name)) == (name not in coupled), name
