"""Which parameters train: LoRA adapters through ``peft``, or every parameter (full fine-tuning).

The trainer builds the optimizer from the returned model with timm's ``create_optimizer_v2``, whose parameter
grouping skips parameters with ``requires_grad=False``; so DualAdam and every baseline update exactly the LoRA
matrices (or everything, for ``full``). :func:`trainable_parameters` gives the same list explicitly.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from dualadam.tasks.llm.errors import LLMConfigError, require

log = logging.getLogger(__name__)

FINETUNE_METHODS = ("lora", "full")


def linear_layer_names(model: nn.Module) -> list[str]:
    """The distinct short names of the model's linear layers: the candidates for LoRA ``target_modules``."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})


def lora_model(model: nn.Module, lora_cfg) -> nn.Module:
    peft = require("peft")
    targets = list(lora_cfg.target_modules)
    names = [name for name, _ in model.named_modules()]
    # peft matches a target against the end of a module's dotted name; "all-linear" is its own shorthand
    missing = [t for t in targets
               if t != "all-linear" and not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        raise LLMConfigError(f"finetune.lora.target_modules names {missing}, which this model does not have; its "
                             f"linear layers are: {', '.join(linear_layer_names(model))}")
    config = peft.LoraConfig(r=int(lora_cfg.r), lora_alpha=float(lora_cfg.alpha),
                             lora_dropout=float(lora_cfg.dropout),
                             target_modules="all-linear" if "all-linear" in targets else targets,
                             bias="none", task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def apply_finetuning(model: nn.Module, finetune_cfg) -> nn.Module:
    """The model to train: a ``peft`` LoRA wrapper (base weights frozen) or ``model`` itself, fully trainable."""
    method = finetune_cfg.method
    if method == "lora":
        model = lora_model(model, finetune_cfg.lora)
    else:  # "full", the other of FINETUNE_METHODS (config.validate_finetune)
        model.requires_grad_(True)
    trainable, total = parameter_counts(model)
    log.info("Fine-tuning (%s): %d of %d parameters train (%.2f%%)", method, trainable, total,
             100.0 * trainable / total)
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer updates (``create_optimizer_v2`` accepts this list or the model)."""
    return [p for p in model.parameters() if p.requires_grad]


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once."""
    parameters = list(model.parameters())  # nn.Module.parameters() already yields a tied tensor once
    return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the tensors that train: what a checkpoint needs when the frozen base weights can be reloaded from
    their source (for SmolLM2-135M with LoRA r=8 on q/k/v/o: 3.7 MB instead of 540 MB)."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {key: value for key, value in model.state_dict().items() if key in names}


def load_trainable_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Restore :func:`trainable_state_dict` into a freshly built model of the same config."""
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"The saved trainable tensors do not fit this model (different finetune config?): "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=False)
