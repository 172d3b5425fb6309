"""Every config in every group composes, validates and instantiates; schedules and bad input behave."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf, open_dict

from dualadam.optim.schedules import inverse_adam_rate as dualadam_alpha
from dualadam.tasks import validate_config
from dualadam.train import train
from dualadam.training.optimizers import build_optimizer, warmup_steps
from dualadam.training.outputs import config_hash
from dualadam.training.runtime import progress_enabled, resolve_runtime
from dualadam.training.schedulers import TrainingLength, build_lr_scheduler, lr_multiplier
from dualadam.training.validation import ConfigError
from dualadam.training.wandb_logger import resolve_mode
from tests.conftest import CONFIG_DIR, compose_train_config

GROUPS = ("task", "dataset", "model", "optimizer", "scheduler", "logger", "trainer", "debug", "experiment")


def group_choices(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


ALL_CHOICES = [(group, name) for group in GROUPS for name in group_choices(group)]
OPTIMIZERS = group_choices("optimizer")
SCHEDULERS = group_choices("scheduler")


def test_every_group_has_configs():
    for group in ("dataset", "model", "optimizer", "scheduler", "logger", "trainer"):
        assert group_choices(group), f"configs/{group}/ is empty"
    assert {"dualadam", "invadam", "adam", "adamw", "sgd", "radam", "nadam", "adabelief", "lion",
            "adam_matched_warmup"} <= set(OPTIMIZERS)
    assert {"cosine_epoch", "cosine_warmup", "step", "constant"} <= set(SCHEDULERS)


@pytest.mark.parametrize(("group", "name"), ALL_CHOICES, ids=[f"{g}={n}" for g, n in ALL_CHOICES])
def test_config_composes_and_validates(group, name):
    # Text datasets and causal LMs belong to task=llm_finetune: compose them on top of its smoke config.
    base = ["debug=llm_smoke"] if is_llm_choice(group, name) else []
    cfg = compose_train_config([*base, f"{group}={name}"], fast=False)
    if (group, name) in NEEDS_A_USER_VALUE:   # your own data or model: validation asks for it
        with pytest.raises(ConfigError, match=NEEDS_A_USER_VALUE[group, name]):
            validate_config(cfg)
        return
    validate_config(cfg)


# Choices that name the user's own files or code (tests/test_image_folder.py, tests/test_custom_model.py).
NEEDS_A_USER_VALUE = {("dataset", "image_folder"): "dataset.path: is not set",
                      ("model", "custom"): "model._target_ is not set"}


def is_llm_choice(group: str, name: str) -> bool:
    """LLM model configs name a ``source``; image dataset configs have a ``root`` folder (or, your own, a
    ``path``), text ones do not."""
    cfg = OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml")
    image_dataset = "root" in cfg or "path" in cfg.keys()
    return (group == "model" and "source" in cfg) or (group == "dataset" and not image_dataset)


def test_task_llm_finetune_brings_its_own_defaults_and_task_stays_a_plain_string():
    cfg = compose_train_config(["task=llm_finetune"], fast=False)
    assert cfg.task == "llm_finetune" and isinstance(cfg.task, str)   # the run identity hashes this string
    assert (cfg.model.source, cfg.dataset.name, cfg.finetune.method) == ("smollm2_gguf", "arithmetic", "lora")
    validate_config(cfg)
    assert compose_train_config(fast=False).task == "image_classification"


@pytest.mark.parametrize("overrides, fix", [
    (["model=smollm2_135m"], "task=llm_finetune"),
    (["model=hf_causal_lm"], "task=llm_finetune"),
    (["model=tiny_llama"], "task=llm_finetune"),
    (["dataset=arithmetic"], "task=llm_finetune"),
    (["dataset=gsm8k"], "task=llm_finetune"),
    (["dataset=alpaca"], "task=llm_finetune"),
    (["dataset=jsonl"], "task=llm_finetune"),
    (["task=llm_finetune", "model=resnet18_cifar"], "task=image_classification"),
    (["task=llm_finetune", "model=timm"], "task=image_classification"),
    (["task=llm_finetune", "dataset=cifar10"], "task=image_classification"),
    (["task=llm_finetune", "dataset=synthetic"], "task=image_classification"),
])
def test_a_model_or_dataset_of_the_other_task_fails_naming_the_task_that_runs_it(overrides, fix):
    cfg = compose_train_config(overrides, fast=False)
    with pytest.raises(ConfigError, match=f"is a (model|dataset) of task .*Run it with `{fix}`"):
        validate_config(cfg)


def test_a_choice_of_the_other_task_fails_before_the_run_starts(make_cfg):
    cfg = make_cfg("model=smollm2_135m", fast=False)   # the fast overrides set image-model keys
    with pytest.raises(ConfigError, match="task=llm_finetune"):
        train(cfg)
    assert not Path(cfg.run_dir).exists() or not any(Path(cfg.run_dir).iterdir())


def test_defaults_are_the_papers_setup():
    cfg = compose_train_config(fast=False)
    assert (cfg.dataset.name, cfg.model.name, cfg.optimizer.name) == ("cifar10", "resnet18_cifar", "dualadam")
    assert cfg.optimizer.kwargs.switch_rate == 8e-5 and cfg.optimizer.lr == 1e-2
    assert (cfg.trainer.batch_size, cfg.trainer.epochs, cfg.seed) == (128, 200, 42)
    assert (cfg.scheduler.name, cfg.scheduler.min_lr_ratio) == ("cosine_epoch", 1e-3)
    assert cfg.trainer.precision == "auto" and cfg.task == "image_classification"


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_config_builds_and_steps(name):
    cfg = compose_train_config([f"optimizer={name}"])
    model = tiny_model()
    optimizer = build_optimizer(cfg.optimizer, model)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(torch.randn(16, 5)), torch.randint(0, 3, (16,)))
    loss.backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert all(group["lr"] == cfg.optimizer.lr for group in optimizer.param_groups)
    module = type(optimizer).__module__
    assert module.startswith(("dualadam.", "torch.", "timm.")), module  # baselines are never hand-written here


def test_baselines_carry_the_authors_hyperparameters():
    def group_of(name):
        return build_optimizer(compose_train_config([f"optimizer={name}"]).optimizer, tiny_model()).param_groups[0]

    assert group_of("adamw")["weight_decay"] == 1e-2
    radam = group_of("radam")
    assert radam["weight_decay"] == 1e-2 and radam["decoupled_weight_decay"] is True
    nadam = group_of("nadam")
    assert nadam["momentum_decay"] == 4e-3 and nadam["decoupled_weight_decay"] is True
    sgd = group_of("sgd")
    assert sgd["momentum"] == 0.9 and sgd["nesterov"] is False
    dual = group_of("dualadam")
    assert dual["switch_rate"] == 8e-5 and dual["betas"] == (0.9, 0.999)


def test_any_timm_optimizer_can_be_named():
    cfg = compose_train_config(["optimizer=adam", "optimizer.name=lamb"])
    validate_config(cfg)
    assert type(build_optimizer(cfg.optimizer, tiny_model())).__name__ == "Lamb"


@pytest.mark.parametrize("name", SCHEDULERS)
def test_scheduler_config_steps_through_a_run(name):
    cfg = compose_train_config([f"scheduler={name}"])
    optimizer = torch.optim.SGD(tiny_model().parameters(), lr=0.5)
    length = TrainingLength(steps_per_epoch=2, epochs=200)
    scheduler = build_lr_scheduler(cfg.scheduler, optimizer, length)
    lrs = []
    for _ in range(length.total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert all(0 < lr <= 0.5 for lr in lrs)
    assert max(lrs) == pytest.approx(0.5, rel=1e-3)
    assert lrs[-1] == (0.5 if name == "constant" else pytest.approx(0.5 * 1e-3 if "cosine" in name else 0.5 * 0.01,
                                                                     rel=0.1))


def test_cosine_epoch_is_the_papers_cosine_annealing_stepped_per_epoch():
    cfg = compose_train_config(["scheduler=cosine_epoch"])
    epochs, steps_per_epoch, lr = 12, 5, 1e-2
    multiplier = lr_multiplier(cfg.scheduler, TrainingLength(steps_per_epoch, epochs))
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    torch_cosine = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=epochs, eta_min=lr / 1000)
    for epoch in range(epochs):
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            assert lr * multiplier(step) == pytest.approx(reference.param_groups[0]["lr"], rel=1e-9)
        reference.step()
        torch_cosine.step()


def test_matched_warmup_ramps_the_lr_like_dualadams_adam_share():
    cfg = compose_train_config(["optimizer=adam_matched_warmup", "scheduler=constant"])
    switch_rate = cfg.optimizer.matched_switch_rate
    assert switch_rate == compose_train_config().optimizer.kwargs.switch_rate  # matched to the default DualAdam
    assert warmup_steps(cfg.optimizer) == 12_500
    multiplier = lr_multiplier(cfg.scheduler, TrainingLength(100, 200), warmup_steps(cfg.optimizer))
    # k-th optimizer step, 1-based. (Step 12,499 differs: DualAdam's hard hand-over zeroes alpha one step early.)
    for k in (1, 2, 100, 6_250, 12_498, 12_500, 12_501, 20_000):
        adam_share = 1.0 - dualadam_alpha("linear", k, switch_rate)
        assert multiplier(k - 1) == pytest.approx(adam_share, abs=1e-9), k


@pytest.mark.parametrize("name", SCHEDULERS)
def test_matched_warmup_composes_with_every_scheduler(name):
    cfg = compose_train_config(["optimizer=adam_matched_warmup", f"scheduler={name}"])
    length = TrainingLength(steps_per_epoch=1000, epochs=30)
    plain = lr_multiplier(cfg.scheduler, length)
    warmed = lr_multiplier(cfg.scheduler, length, warmup_steps(cfg.optimizer))
    for step in (0, 999, 5_000, 12_499, 12_500, 29_999):
        assert warmed(step) == pytest.approx(plain(step) * min(1.0, (step + 1) / 12_500), rel=1e-12)


def test_runtime_resolves_auto_for_this_machine():
    runtime = resolve_runtime(compose_train_config().trainer)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime.device.type == expected
    assert runtime.precision == ("bf16" if expected == "cuda" else "32")
    assert runtime.channels_last == (expected == "cuda")


def test_progress_bars_stay_quiet_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert progress_enabled("auto") is False
    assert progress_enabled(True) is True and progress_enabled(False) is False


def test_wandb_mode_auto_is_offline_without_credentials_and_online_with_them(isolated_wandb, monkeypatch,
                                                                             tmp_path):
    assert resolve_mode("auto") == "offline"
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode("auto") == "online"
    assert resolve_mode("disabled") == "disabled"
    assert compose_train_config(["logger=none"], fast=False).logger.mode == "disabled"


def test_config_hash_ignores_where_outputs_go_but_not_what_is_trained():
    base = compose_train_config()
    moved = compose_train_config(["logger.mode=offline", "logger.project=other", "trainer.progress=true",
                                  "hydra.run.dir=elsewhere"])
    for cfg, run_dir in ((base, "a"), (moved, "b")):
        with open_dict(cfg):
            cfg.run_dir = run_dir
    assert config_hash(base) == config_hash(moved)
    assert config_hash(base) != config_hash(compose_train_config(["seed=1"]))
    assert config_hash(base) != config_hash(compose_train_config(["optimizer.lr=0.02"]))
    assert len(config_hash(base)) == 64


BAD_OVERRIDES = [
    ("optimizer.lr=-0.1", "optimizer.lr"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.batch_size=-4", "trainer.batch_size"),
    ("trainer.eval_batch_size=0", "trainer.eval_batch_size"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.num_workers=-1", "trainer.num_workers"),
    ("optimizer.weight_decay=-1e-4", "optimizer.weight_decay"),
    ("optimizer.kwargs.switch_rate=2.0", "optimizer.kwargs.switch_rate"),
    ("trainer.precision=fp8", "trainer.precision"),
    ("trainer.monitor=test/accuracy", "trainer.monitor"),
    ("scheduler.min_lr_ratio=1.5", "scheduler.min_lr_ratio"),
    ("+scheduler.warmup=3", "scheduler.warmup"),
    ("logger.mode=sometimes", "logger.mode"),
    ("seed=-1", "seed"),
    ("optimizer.kwargs.betas=[0.9,1.5]", "optimizer.kwargs.betas"),
    ("optimizer=sgd optimizer.kwargs.nesterov=maybe", "optimizer.kwargs.nesterov"),
    ("+optimizer.kwargs.lr=0.1", "optimizer.kwargs.lr"),
    ("+optimizer.momentum=0.9", "optimizer.momentum"),
    ("dataset.train_size=0", "dataset.train_size"),
    ("dataset.augmentation=crop_flop", "dataset.augmentation"),
    ("model.pretrained=yes", "model.pretrained"),
    ("logger.init_timeout=0", "logger.init_timeout"),
]


@pytest.mark.parametrize(("override", "key"), BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_values_fail_validation_naming_the_key(override, key):
    cfg = compose_train_config(override.split())
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)


@pytest.mark.parametrize(("override", "valid_example"), [
    ("dataset.name=cifar11", "cifar10"),
    ("model.name=resnet_nonexistent", "resnet18_cifar"),
    ("optimizer.name=dualadamm", "dualadam"),
    ("scheduler.name=cosine", "cosine_epoch"),
])
def test_unknown_names_list_the_valid_choices(override, valid_example):
    cfg = compose_train_config([override])
    with pytest.raises(ConfigError) as raised:
        validate_config(cfg)
    message = str(raised.value)
    assert override.split("=")[0] in message and valid_example in message


# Issue 13's inputs that got past validation and failed after data and model were built, naming no key.
LATE_FAILURES = [
    ("+optimizer.kwargs.swich_rate=1e-4", "optimizer.kwargs.swich_rate is not an argument of optimizer 'dualadam'",
     "Did you mean optimizer.kwargs.switch_rate?"),
    ("optimizer=adam +optimizer.kwargs.switch_rate=1e-3",
     "optimizer.kwargs.switch_rate is not an argument of optimizer 'adam'", "~optimizer.kwargs.switch_rate"),
    ("optimizer.kwargs.betas=[0.9]", "optimizer.kwargs.betas=[0.9] is invalid", "2 numbers in [0, 1)"),
    ("optimizer.kwargs.eps=-1", "optimizer.kwargs.eps=-1 is invalid", "a number > 0"),
    ("dataset.num_classes=0", "dataset.num_classes=0 is invalid", "an integer >= 1"),
    ("dataset.image_size=0", "dataset.image_size=0 is invalid", "an integer >= 1"),
]


@pytest.mark.parametrize(("overrides", "problem", "fix"), LATE_FAILURES, ids=[o for o, _, _ in LATE_FAILURES])
def test_bad_input_fails_before_any_data_or_model_naming_key_problem_and_fix(make_cfg, overrides, problem, fix):
    cfg = make_cfg(*overrides.split())
    with pytest.raises(ConfigError) as raised:
        train(cfg)
    assert problem in str(raised.value) and fix in str(raised.value)
    assert not Path(cfg.run_dir).exists()


def test_naming_another_optimizer_runs_it_with_its_own_defaults():
    """docs/training.md's `model=timm model.name=convnext_atto optimizer.name=lamb`: DualAdam's kwargs (the default
    group's) are not handed to Lamb."""
    cfg = compose_train_config(["model=timm", "model.name=convnext_atto", "optimizer.name=lamb"], fast=False)
    validate_config(cfg)
    optimizer = build_optimizer(cfg.optimizer, tiny_model())
    reference = type(optimizer)(tiny_model().parameters())
    assert type(optimizer).__name__ == "Lamb" and "switch_rate" not in optimizer.param_groups[0]
    assert optimizer.param_groups[0]["eps"] == reference.param_groups[0]["eps"] != 1e-8   # Lamb's, not DualAdam's
    with_kwargs = compose_train_config(["optimizer.name=lamb", "optimizer.kwargs_for=lamb"])
    with pytest.raises(ConfigError, match=r"optimizer\.kwargs\.switch_rate is not an argument of optimizer 'lamb'"):
        validate_config(with_kwargs)


def test_unknown_config_choice_is_hydras_error_listing_the_options():
    with pytest.raises(MissingConfigException) as raised:
        compose_train_config(["optimizer=adamm"])
    assert "dualadam" in str(raised.value) and "adamw" in str(raised.value)


def test_an_unknown_task_is_hydras_error_listing_the_tasks():
    with pytest.raises(MissingConfigException) as raised:
        compose_train_config(["task=segmentation"])
    assert "image_classification" in str(raised.value) and "llm_finetune" in str(raised.value)


def test_validation_accepts_a_finite_float_lr_only():
    cfg = compose_train_config(["optimizer.lr=nan"])
    assert math.isnan(cfg.optimizer.lr)
    with pytest.raises(ConfigError, match=r"optimizer\.lr"):
        validate_config(cfg)
