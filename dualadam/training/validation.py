"""Check the whole resolved config once, before anything is built, so a typo fails in a second, not an hour in.

Every error names the config key, the bad value and what would be valid.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Iterable

import torch
from omegaconf import DictConfig

from dualadam.data import DATASET_NAMES
from dualadam.data.memory import LOADERS
from dualadam.llm import LLMConfigError, validate_llm_config
from dualadam.models import unknown_model_problem
from dualadam.training.metrics import EPOCH_METRIC_KEYS, VALIDATION_METRIC_KEYS, selection_split
from dualadam.training.optimizers import has_fused_path, optimizer_names
from dualadam.training.runtime import PRECISIONS
from dualadam.training.schedulers import SCHEDULES
from dualadam.training.tasks import TASKS, holds_validation_split
from dualadam.training.wandb_logger import MODES

AUTO_OR_BOOL = ("auto", True, False)


class ConfigError(ValueError):
    """A config value that cannot work. The message says which key and how to fix it."""


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}. Fix it with an override, "
                          f"e.g. `python -m dualadam.train {key}=<value>`.")


def check_choice(key: str, value, choices: Iterable[str], what: str) -> None:
    choices = sorted(choices)
    if value in choices:
        return
    close = difflib.get_close_matches(str(value), choices, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"Unknown {what} {key}={value!r}.{hint} Valid choices: {', '.join(choices)}")


def check_model_name(key: str, name: str) -> None:
    problem = unknown_model_problem(name)  # the model registry is the one judge of a model name
    if problem is not None:
        raise ConfigError(f"{key}: {problem}")


def check_device(key: str, name: str) -> None:
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"{key}={name!r} is not a device ({error}); use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name!r} but no CUDA device is available here; use {key}=auto or {key}=cpu")


def check_schedule_params(scheduler_cfg: DictConfig) -> None:
    schedule = SCHEDULES[scheduler_cfg.name]
    accepted = [p.name for p in inspect.signature(schedule).parameters.values() if p.kind == p.KEYWORD_ONLY]
    given = [k for k in scheduler_cfg if k != "name"]
    for key in given:
        if key not in accepted:
            raise ConfigError(f"scheduler.{key} is not a parameter of scheduler {scheduler_cfg.name!r} "
                              f"(its parameters: {', '.join(accepted) or 'none'})")
    for key in accepted:
        if key not in given:
            raise ConfigError(f"scheduler.{key} is missing; scheduler {scheduler_cfg.name!r} needs it")
    sc = scheduler_cfg
    if "min_lr_ratio" in sc:
        check(_is_number(sc.min_lr_ratio) and 0 <= sc.min_lr_ratio <= 1, "scheduler.min_lr_ratio",
              sc.min_lr_ratio, "a number in [0, 1] (final lr / initial lr)")
    if "warmup_epochs" in sc:
        check(_is_number(sc.warmup_epochs) and sc.warmup_epochs >= 0, "scheduler.warmup_epochs",
              sc.warmup_epochs, "a number of epochs >= 0")
    if "gamma" in sc:
        check(_is_number(sc.gamma) and sc.gamma > 0, "scheduler.gamma", sc.gamma, "a factor > 0")
    if "milestones" in sc:
        check(all(_is_int(m) and m >= 0 for m in sc.milestones), "scheduler.milestones",
              list(sc.milestones), "a list of epoch numbers >= 0")


def check_optimizer(opt: DictConfig, names: list[str]) -> None:
    check_choice("optimizer.name", opt.name, names, "optimizer")
    check(_is_number(opt.lr) and opt.lr > 0, "optimizer.lr", opt.lr, "a learning rate > 0")
    check(_is_number(opt.weight_decay) and opt.weight_decay >= 0, "optimizer.weight_decay", opt.weight_decay,
          "a number >= 0")
    check(isinstance(opt.filter_bias_and_bn, bool), "optimizer.filter_bias_and_bn", opt.filter_bias_and_bn,
          "true or false")
    warmup = opt.get("warmup_steps", 0)
    check(_is_int(warmup) and warmup >= 0, "optimizer.warmup_steps", warmup, "an integer number of steps >= 0")
    matched = opt.get("matched_switch_rate")
    check(matched is None or (_is_number(matched) and 0 < matched <= 1), "optimizer.matched_switch_rate",
          matched, "null or a switch rate in (0, 1]; the warmup lasts round(1 / switch_rate) steps")
    check(matched is None or not warmup, "optimizer.warmup_steps", warmup,
          "0 when optimizer.matched_switch_rate is set (it sets the warmup length)")
    kwargs = opt.get("kwargs") or {}
    if "switch_rate" in kwargs:
        check(_is_number(kwargs.switch_rate) and 0 <= kwargs.switch_rate <= 1, "optimizer.kwargs.switch_rate",
              kwargs.switch_rate, "a number in [0, 1]; DualAdam's blend lasts 1 / switch_rate steps")


def check_trainer(trainer: DictConfig) -> None:
    for key in ("epochs", "batch_size", "eval_batch_size"):
        check(_is_int(trainer[key]) and trainer[key] >= 1, f"trainer.{key}", trainer[key], "an integer >= 1")
    check(_is_int(trainer.num_workers) and trainer.num_workers >= 0, "trainer.num_workers", trainer.num_workers,
          "an integer >= 0 (0 loads data in the main process)")
    check_choice("trainer.precision", str(trainer.precision), PRECISIONS, "precision")
    check_device("trainer.device", str(trainer.device))
    for key in ("channels_last", "progress"):
        check(trainer[key] in AUTO_OR_BOOL, f"trainer.{key}", trainer[key], "auto, true or false")
    fused = trainer.get("fused_optimizer", "auto")
    check(fused in AUTO_OR_BOOL, "trainer.fused_optimizer", fused, "auto (on for CUDA), true or false")
    for key in ("compile", "deterministic"):
        check(isinstance(trainer[key], bool), f"trainer.{key}", trainer[key], "true or false")
    check_choice("trainer.monitor", trainer.monitor, (*EPOCH_METRIC_KEYS, *VALIDATION_METRIC_KEYS), "metric")
    for key in ("resume", "sync_batchnorm"):
        check(isinstance(trainer.get(key, True), bool), f"trainer.{key}", trainer.get(key), "true or false")
    check_every = trainer.get("check_every", 50)
    check(_is_int(check_every) and check_every >= 1, "trainer.check_every", check_every,
          "an integer number of optimizer steps >= 1")


def check_selection(cfg: DictConfig) -> None:
    """With a validation split the best epoch is chosen on it, never on test; without one val/* does not exist."""
    split, held_out = selection_split(cfg.trainer.monitor), holds_validation_split(cfg)
    check(split != "test" or not held_out, "trainer.monitor", cfg.trainer.monitor,
          "val/acc or val/loss: the data holds a validation split out, so the best epoch is chosen on it")
    check(split != "val" or held_out, "trainer.monitor", cfg.trainer.monitor,
          "a metric the run records: val/* needs a validation split (dataset.val_size; dataset.val_file or "
          "val_fraction for text)")


def check_analysis(analysis: DictConfig) -> None:
    check(isinstance(analysis.sharpness, bool), "analysis.sharpness", analysis.sharpness, "true or false")
    for key in ("batches", "eig_iters", "trace_samples"):
        check(_is_int(analysis[key]) and analysis[key] >= 1, f"analysis.{key}", analysis[key], "an integer >= 1")


def validate_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for the first problem found."""
    check(_is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    check_choice("task", cfg.task, TASKS, "task")
    if cfg.task == "llm_finetune":
        try:
            validate_llm_config(cfg)
        except LLMConfigError as error:
            raise ConfigError(str(error)) from None
    else:
        check_choice("dataset.name", cfg.dataset.name, DATASET_NAMES, "dataset")
        check_choice("dataset.loader", cfg.dataset.get("loader") or "dataloader", LOADERS, "loader")
        check_model_name("model.name", cfg.model.name)
        val_size = cfg.dataset.get("val_size")
        check(val_size is None or (_is_int(val_size) and val_size >= 1), "dataset.val_size", val_size,
              "null (no validation split) or a number of training images to hold out, e.g. 5000")
    check_optimizer(cfg.optimizer, optimizer_names())
    check_choice("scheduler.name", cfg.scheduler.name, SCHEDULES, "scheduler")
    check_schedule_params(cfg.scheduler)
    check_trainer(cfg.trainer)
    check_selection(cfg)
    if cfg.trainer.get("fused_optimizer", "auto") is True:
        check(has_fused_path(cfg.optimizer.name), "trainer.fused_optimizer", True,
              f"auto or false: optimizer {cfg.optimizer.name!r} has no fused implementation")
    check_choice("logger.mode", str(cfg.logger.mode), MODES, "W&B mode")
    if "analysis" in cfg:
        check_analysis(cfg.analysis)
