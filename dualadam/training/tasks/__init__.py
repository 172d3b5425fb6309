"""Tasks the trainer can run, by the name ``cfg.task`` selects."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from dualadam.llm.task import LLMFineTuning
from dualadam.training.runtime import Runtime
from dualadam.training.tasks.base import EpochLoader, Task
from dualadam.training.tasks.image_classification import ImageClassification

TASKS: dict[str, Callable[[DictConfig, Runtime], Task]] = {
    "image_classification": ImageClassification,
    "llm_finetune": LLMFineTuning,  # transformers/peft load only when the task is built (the `llm` extra)
}


def build_task(cfg: DictConfig, runtime: Runtime) -> Task:
    return TASKS[cfg.task](cfg, runtime)


__all__ = ["TASKS", "EpochLoader", "Task", "ImageClassification", "build_task"]
