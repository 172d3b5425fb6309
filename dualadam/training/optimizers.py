"""Build any optimizer by name through timm's registry, DualAdam and InvAdam included.

Every optimizer, ours and the baselines, goes through ``timm.optim.create_optimizer_v2``, so they share one
param-group policy. Baselines are torch's or timm's own classes, never re-implemented here.

The ``optimizer`` config: ``name`` (a timm registry name), ``lr``, ``weight_decay``, ``filter_bias_and_bn``
(timm's no-decay-on-biases-and-norms policy; the authors decayed every parameter), ``kwargs`` (passed to the
optimizer class) with ``kwargs_for`` (the optimizer they were written for, see :func:`optimizer_kwargs`), and
the warmup keys read by :func:`warmup_steps`.

timm (and through it torchvision) takes seconds to import, so it is imported only when a registry is asked.
"""

from __future__ import annotations

import inspect
import logging

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def timm_optim():
    """timm's optimizer module, with dualadam and invadam registered in it."""
    from dualadam.integrations.timm import register_with_timm  # idempotent; keeps dynamo's recompile limit

    return register_with_timm()


def optimizer_names() -> list[str]:
    """Every name ``optimizer.name`` accepts: timm's registry, which includes dualadam and invadam."""
    return timm_optim().list_optimizers()


def optimizer_class(name: str) -> type | None:
    """The class timm builds for ``name`` (``lookahead_<opt>`` wraps ``<opt>``'s), or None where it cannot be
    imported here (apex, bitsandbytes)."""
    timm_optim()
    from timm.optim._optim_factory import default_registry

    info = default_registry.get_optimizer_info(name.split("_")[-1] if name.startswith("lookahead_") else name)
    try:
        return default_registry.get_optimizer_class(info, bind_defaults=False)
    except (ImportError, AssertionError):
        return None


def optimizer_kwargs(optimizer_cfg) -> dict:
    """What is passed to the optimizer class: ``optimizer.kwargs`` if they were written for ``optimizer.name``
    (``optimizer.kwargs_for``, set by each ``configs/optimizer/*.yaml``), else nothing, so naming another
    optimizer (``optimizer.name=lamb``) runs it with its own defaults instead of DualAdam's ``switch_rate``."""
    kwargs_cfg = optimizer_cfg.get("kwargs")
    if kwargs_cfg is None or kwargs_for_another(optimizer_cfg):
        return {}
    return _as_python(OmegaConf.to_container(kwargs_cfg, resolve=True)
                      if OmegaConf.is_config(kwargs_cfg) else dict(kwargs_cfg))


def kwargs_for_another(optimizer_cfg) -> bool:
    """Whether ``optimizer.kwargs`` were written for another optimizer than ``optimizer.name``."""
    written_for = optimizer_cfg.get("kwargs_for")
    return written_for is not None and written_for != optimizer_cfg.name


def _as_python(value):
    """YAML lists become tuples (``betas``) and OmegaConf containers plain Python, as optimizers expect."""
    if isinstance(value, list):
        return tuple(_as_python(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_python(v) for k, v in value.items()}
    return value


def has_fused_path(name: str) -> bool:
    """Whether the optimizer class registered as ``name`` takes ``fused=`` (torch's Adam/AdamW/SGD, DualAdam)."""
    opt_class = optimizer_class(name)
    return opt_class is not None and "fused" in inspect.signature(opt_class).parameters


def fused_kwargs(name: str, setting: bool | str, device: torch.device) -> dict:
    """``{"fused": True}`` when the optimizer's single-kernel path should be used, else ``{}``.

    ``setting`` is ``trainer.fused_optimizer``: ``auto`` turns it on for CUDA only. On a CPU, DualAdam's fused
    path first ``torch.compile``s its blend step (20-60 s, once per process), more than a short run gains.
    """
    if setting == "auto":
        return {"fused": True} if device.type == "cuda" and has_fused_path(name) else {}
    problem = fused_setting_problem(name, setting)
    if problem is not None:
        raise ValueError(problem)
    return {"fused": True} if setting else {}


def fused_setting_problem(name: str, setting: bool | str) -> str | None:
    """What is wrong with ``trainer.fused_optimizer=setting`` for optimizer ``name``, or None (the one home of
    this rule: the config validation and ``fused_kwargs`` both ask it)."""
    if setting is not True or has_fused_path(name):
        return None
    fused = [n for n in ("adam", "adamw", "sgd", "dualadam", "invadam") if has_fused_path(n)]
    return (f"trainer.fused_optimizer=true but optimizer {name!r} has no fused implementation "
            f"(these do: {', '.join(fused)}); use trainer.fused_optimizer=auto or false")


def build_optimizer(optimizer_cfg: DictConfig, model: torch.nn.Module,
                    fused: bool | str = False) -> torch.optim.Optimizer:
    """``fused``: ``trainer.fused_optimizer`` (see ``fused_kwargs``); ``optimizer.kwargs.fused``, if set, wins."""
    if kwargs_for_another(optimizer_cfg) and optimizer_cfg.get("kwargs"):
        log.info("optimizer.kwargs (%s) are %s's; optimizer.name=%s runs with its own defaults (set "
                 "optimizer.kwargs_for=%s to pass kwargs to it)", ", ".join(optimizer_cfg.kwargs),
                 optimizer_cfg.kwargs_for, optimizer_cfg.name, optimizer_cfg.name)
    device = next(model.parameters()).device
    kwargs = {**fused_kwargs(optimizer_cfg.name, fused, device), **optimizer_kwargs(optimizer_cfg)}
    return timm_optim().create_optimizer_v2(
        model,
        opt=optimizer_cfg.name,
        lr=float(optimizer_cfg.lr),
        weight_decay=float(optimizer_cfg.weight_decay),
        filter_bias_and_bn=bool(optimizer_cfg.filter_bias_and_bn),
        **kwargs,
    )


def optimizer_label(optimizer_cfg) -> str:
    """What run folders and tables call the optimizer a config describes: its ``name``, or
    ``<name>_matched_warmup`` for the warmup control (the config that has ``matched_switch_rate``), which is
    Adam underneath but must never be mistaken for plain Adam."""
    name = str(optimizer_cfg.get("name", "unknown"))
    return f"{name}_matched_warmup" if optimizer_cfg.get("matched_switch_rate") is not None else name


def warmup_steps(optimizer_cfg: DictConfig) -> int:
    """Linear-warmup length in optimizer steps.

    ``matched_switch_rate`` (``optimizer=adam_matched_warmup``) sets it to ``round(1 / switch_rate)``: the
    number of steps over which DualAdam's Adam share ``1 - alpha_t = t * switch_rate`` grows from 0 to 1, so
    the warmup ramps the Adam step exactly as DualAdam's blend does, without the inverse term.
    """
    matched = optimizer_cfg.get("matched_switch_rate")
    if matched is not None:
        return round(1.0 / float(matched))
    return int(optimizer_cfg.get("warmup_steps") or 0)


def inverse_adam_rate(optimizer: torch.optim.Optimizer) -> float:
    """DualAdam's current mixing weight alpha (1.0 for InvAdam); 0.0 for optimizers without an inverse term,
    so every run has the same columns and 0 reads as "pure Adam-family update"."""
    return float(optimizer.param_groups[0].get("inverse_adam_rate", 0.0))
