"""Check the whole resolved config once, before anything is built, so a typo fails in a second, not an hour in.

Every error names the config key, the bad value and what would be valid. This module checks the keys of the
core (seed, optimizer, scheduler, trainer, logger, analysis); the task's own keys (model, dataset, ...) are
checked by the task's ``TaskDefinition.check_config``, with the helpers below. The checks that need no
registry run first; the registries (timm's optimizers and models, the datasets, the LLM stack) are imported
only for the checks that ask them, after every plain value passed, so a bad number answers before timm is
imported.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Iterable

import torch
from omegaconf import DictConfig

from dualadam.training.metrics import EPOCH_METRIC_KEYS, VALIDATION_METRIC_KEYS, selection_split
from dualadam.training.optimizers import (
    fused_setting_problem,
    optimizer_class,
    optimizer_kwargs,
    optimizer_names,
)
from dualadam.training.runtime import PRECISIONS
from dualadam.training.schedulers import SCHEDULES
from dualadam.training.task import TaskDefinition
from dualadam.training.wandb_logger import MODES

AUTO_OR_BOOL = ("auto", True, False)
OPTIMIZER_KEYS = ("name", "lr", "weight_decay", "filter_bias_and_bn", "warmup_steps", "matched_switch_rate",
                  "kwargs_for", "kwargs")
# Optimizer kwargs with a range, whichever optimizer takes them: (valid, what is expected).
KWARG_RANGES = {
    "eps": (lambda v: is_number(v) and v > 0, "a number > 0 (added to a denominator)"),
    "momentum": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "dampening": (lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "switch_rate": (lambda v: is_number(v) and 0 <= v <= 1,
                    "a number in [0, 1]; DualAdam's blend lasts 1 / switch_rate steps"),
}
SET_AT_TOP = ("lr", "weight_decay")   # optimizer.<key>, never optimizer.kwargs.<key>


class ConfigError(ValueError):
    """A config value that cannot work. The message says which key and how to fix it."""


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def invalid_value_message(key: str, value, expected: str) -> str:
    return (f"{key}={value!r} is invalid: expected {expected}. Fix it with an override, "
            f"e.g. `python -m dualadam.train {key}=<value>`.")


def check(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(invalid_value_message(key, value, expected))


def did_you_mean(value: str, choices: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=3)
    return f" Did you mean {', '.join(prefix + c for c in close)}?" if close else ""


def check_choice(key: str, value, choices: Iterable[str], what: str) -> None:
    choices = sorted(choices)
    if value in choices:
        return
    raise ConfigError(f"Unknown {what} {key}={value!r}.{did_you_mean(value, choices)} Valid choices: "
                      f"{', '.join(choices)}")


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
        check(is_number(sc.min_lr_ratio) and 0 <= sc.min_lr_ratio <= 1, "scheduler.min_lr_ratio",
              sc.min_lr_ratio, "a number in [0, 1] (final lr / initial lr)")
    if "warmup_epochs" in sc:
        check(is_number(sc.warmup_epochs) and sc.warmup_epochs >= 0, "scheduler.warmup_epochs",
              sc.warmup_epochs, "a number of epochs >= 0")
    if "gamma" in sc:
        check(is_number(sc.gamma) and sc.gamma > 0, "scheduler.gamma", sc.gamma, "a factor > 0")
    if "milestones" in sc:
        check(all(is_int(m) and m >= 0 for m in sc.milestones), "scheduler.milestones",
              list(sc.milestones), "a list of epoch numbers >= 0")


def check_optimizer(opt: DictConfig) -> None:
    """The optimizer's plain values; ``check_optimizer_kwargs`` asks timm's registry about its name and kwargs."""
    for key in opt:
        if key not in OPTIMIZER_KEYS:
            raise ConfigError(f"optimizer.{key} is not an optimizer setting.{did_you_mean(key, OPTIMIZER_KEYS)} "
                              f"Settings: {', '.join(OPTIMIZER_KEYS)}; arguments of the optimizer class go under "
                              f"optimizer.kwargs (e.g. +optimizer.kwargs.{key}=...)")
    check(is_number(opt.lr) and opt.lr > 0, "optimizer.lr", opt.lr, "a learning rate > 0")
    check(is_number(opt.weight_decay) and opt.weight_decay >= 0, "optimizer.weight_decay", opt.weight_decay,
          "a number >= 0")
    check(isinstance(opt.filter_bias_and_bn, bool), "optimizer.filter_bias_and_bn", opt.filter_bias_and_bn,
          "true or false")
    warmup = opt.get("warmup_steps", 0)
    check(is_int(warmup) and warmup >= 0, "optimizer.warmup_steps", warmup, "an integer number of steps >= 0")
    matched = opt.get("matched_switch_rate")
    check(matched is None or (is_number(matched) and 0 < matched <= 1), "optimizer.matched_switch_rate",
          matched, "null or a switch rate in (0, 1]; the warmup lasts round(1 / switch_rate) steps")
    check(matched is None or not warmup, "optimizer.warmup_steps", warmup,
          "0 when optimizer.matched_switch_rate is set (it sets the warmup length)")
    kwargs = opt.get("kwargs")
    check(kwargs is None or isinstance(kwargs, DictConfig), "optimizer.kwargs", kwargs,
          "a mapping of the optimizer class's arguments, e.g. {betas: [0.9, 0.999]}")
    for key, value in optimizer_kwargs(opt).items():   # ranges any optimizer agrees on; the rest needs timm
        if key in KWARG_RANGES or key == "betas":
            check_kwarg_value(f"optimizer.kwargs.{key}", value, inspect.Parameter.empty)


def check_optimizer_kwargs(opt: DictConfig) -> None:
    """Each kwarg passed (``optimizers.optimizer_kwargs``) against the signature of the class timm builds for
    ``optimizer.name``: an argument it takes, of the type of its default, in range."""
    check_choice("optimizer.name", opt.name, optimizer_names(), "optimizer")
    written_for = opt.get("kwargs_for")
    check(written_for is None or isinstance(written_for, str), "optimizer.kwargs_for", written_for,
          "the optimizer name optimizer.kwargs were written for (null: whichever optimizer.name names)")
    opt_class = optimizer_class(opt.name)
    if opt_class is None:   # apex / bitsandbytes, not importable here: the optimizer itself will say
        return
    parameters = inspect.signature(opt_class).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    accepted = [n for n, p in parameters.items() if n != "params" and p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                                                 p.KEYWORD_ONLY)]
    for key, value in optimizer_kwargs(opt).items():
        where = f"optimizer.kwargs.{key}"
        if key in SET_AT_TOP:
            raise ConfigError(f"{where} duplicates optimizer.{key}: set optimizer.{key}={value} instead and "
                              f"remove it (~{where})")
        if key not in accepted and not takes_any:
            raise ConfigError(f"{where} is not an argument of optimizer {opt.name!r} ({opt_class.__name__})."
                              f"{did_you_mean(key, accepted, 'optimizer.kwargs.')} Its arguments: "
                              f"{', '.join(accepted)}. Remove it with `~{where}`")
        default = parameters[key].default if key in parameters else inspect.Parameter.empty
        check_kwarg_value(where, value, default)


def check_kwarg_value(where: str, value, default) -> None:
    """``default``: the argument's default in the class's signature (``Parameter.empty``: not known yet)."""
    key = where.rsplit(".", 1)[-1]
    if key == "betas":
        shown = list(value) if isinstance(value, tuple) else value
        check(isinstance(value, tuple | list) and all(is_number(b) and 0 <= b < 1 for b in value), where,
              shown, "numbers in [0, 1), e.g. [0.9, 0.999]")
        if isinstance(default, tuple | list):
            check(len(value) == len(default), where, shown, f"{len(default)} numbers in [0, 1), e.g. "
                                                           f"{list(default)}")
    elif key in KWARG_RANGES:
        valid, expected = KWARG_RANGES[key]
        check(valid(value), where, value, expected)
    elif isinstance(default, bool):
        check(isinstance(value, bool), where, value, "true or false")
    elif is_number(default):
        check(is_number(value), where, value, f"a number (default {default})")


def check_trainer(trainer: DictConfig) -> None:
    for key in ("epochs", "batch_size", "eval_batch_size"):
        check(is_int(trainer[key]) and trainer[key] >= 1, f"trainer.{key}", trainer[key], "an integer >= 1")
    check(is_int(trainer.num_workers) and trainer.num_workers >= 0, "trainer.num_workers", trainer.num_workers,
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
    check(is_int(check_every) and check_every >= 1, "trainer.check_every", check_every,
          "an integer number of optimizer steps >= 1")
    check_recipe(trainer)


def check_recipe(trainer: DictConfig) -> None:
    """The recipe options (``dualadam.training.recipe``); a missing key means the option is off."""
    clip = trainer.get("grad_clip_norm")
    check(clip is None or (is_number(clip) and clip > 0), "trainer.grad_clip_norm", clip,
          "null (no clipping) or the largest global gradient norm, a number > 0 (e.g. 1.0)")
    accum = trainer.get("grad_accum_steps", 1)
    check(is_int(accum) and accum >= 1, "trainer.grad_accum_steps", accum,
          "an integer number of micro-batches per optimizer step >= 1 (1: no accumulation)")
    smoothing = trainer.get("label_smoothing", 0.0)
    check(is_number(smoothing) and 0 <= smoothing < 1, "trainer.label_smoothing", smoothing,
          "a number in [0, 1) (0.0: plain cross-entropy)")


def check_selection(cfg: DictConfig, held_out: bool) -> None:
    """With a validation split (``held_out``, the task's answer) the best epoch is chosen on it, never on test;
    without one val/* does not exist."""
    split = selection_split(cfg.trainer.monitor)
    check(split != "test" or not held_out, "trainer.monitor", cfg.trainer.monitor,
          "val/acc or val/loss: the data holds a validation split out, so the best epoch is chosen on it")
    check(split != "val" or held_out, "trainer.monitor", cfg.trainer.monitor,
          "a metric the run records: val/* needs a validation split (dataset.val_size; dataset.val_file or "
          "val_fraction for text)")


def check_analysis(analysis: DictConfig) -> None:
    check(isinstance(analysis.sharpness, bool), "analysis.sharpness", analysis.sharpness, "true or false")
    for key in ("batches", "eig_iters", "trace_samples"):
        check(is_int(analysis[key]) and analysis[key] >= 1, f"analysis.{key}", analysis[key], "an integer >= 1")


def validate_config(cfg: DictConfig, task: TaskDefinition) -> None:
    """Raise ``ConfigError`` for the first problem found: the core's plain values first, then the task's own
    keys (``task.check_config``), then the core's names that need a registry (optimizers and their arguments)."""
    check(is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    check(cfg.task == task.name, "task", cfg.task, f"{task.name!r}, the task this run was given")
    check_optimizer(cfg.optimizer)
    check_choice("scheduler.name", cfg.scheduler.name, SCHEDULES, "scheduler")
    check_schedule_params(cfg.scheduler)
    check_trainer(cfg.trainer)
    check_choice("logger.mode", str(cfg.logger.mode), MODES, "W&B mode")
    timeout = cfg.logger.get("init_timeout", 15)
    check(is_number(timeout) and timeout > 0, "logger.init_timeout", timeout,
          "seconds > 0 to wait for W&B to start before logging offline")
    if "analysis" in cfg:
        check_analysis(cfg.analysis)
    task.check_config(cfg)
    check_optimizer_kwargs(cfg.optimizer)
    check_selection(cfg, task.holds_validation_split(cfg))
    fused_problem = fused_setting_problem(cfg.optimizer.name, cfg.trainer.get("fused_optimizer", "auto"))
    if fused_problem is not None:
        raise ConfigError(fused_problem)
