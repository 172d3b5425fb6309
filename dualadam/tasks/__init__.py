"""Tasks the trainer can run, by the name ``cfg.task`` selects."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from dualadam.tasks.image.task import ImageClassification
from dualadam.tasks.llm.sources import holds_validation
from dualadam.tasks.llm.task import LLMFineTuning
from dualadam.training.runtime import Runtime
from dualadam.training.task import EpochLoader, Task

TASKS: dict[str, Callable[[DictConfig, Runtime], Task]] = {
    "image_classification": ImageClassification,
    "llm_finetune": LLMFineTuning,  # transformers/peft load only when the task is built (the `llm` extra)
}


def build_task(cfg: DictConfig, runtime: Runtime) -> Task:
    return TASKS[cfg.task](cfg, runtime)


def holds_validation_split(cfg: DictConfig) -> bool:
    """Whether the run's data config holds a validation split out of the training data (then the task's
    ``eval_loaders`` has ``"val"``): ``dataset.val_size`` for images, ``llm.sources.holds_validation`` for text."""
    if cfg.task == "llm_finetune":
        return holds_validation(cfg.dataset)
    return cfg.dataset.get("val_size") is not None


__all__ = ["TASKS", "EpochLoader", "Task", "ImageClassification", "build_task", "holds_validation_split"]
