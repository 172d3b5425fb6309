"""Tasks the trainer can run, by the name ``cfg.task`` selects: the one place that knows every task.

Each task reaches the core (``dualadam.training``, which imports no task) as a ``TaskDefinition``: its own
config check, whether it holds a validation split, and its builder, which imports the task's heavy stack
(timm and torchvision, or transformers) only when called. Callers outside the core use :func:`validate_config`
and :func:`build_task`; ``dualadam.train.train(cfg)`` hands :func:`task_definition` to the core's ``train``.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from dualadam.tasks.image.checks import check_image_config
from dualadam.tasks.image.checks import holds_validation_split as image_holds_validation_split
from dualadam.tasks.llm.config import holds_validation_split as llm_holds_validation_split
from dualadam.tasks.llm.config import validate_llm_config
from dualadam.tasks.llm.sources import DATASET_NAMES as LLM_DATASET_NAMES
from dualadam.training import validation
from dualadam.training.runtime import Runtime
from dualadam.training.task import EpochLoader, Task, TaskDefinition
from dualadam.training.validation import ConfigError, check_choice

IMAGE, LLM = "image_classification", "llm_finetune"


def _build_image_classification(cfg: DictConfig, runtime: Runtime) -> Task:
    from dualadam.tasks.image.task import ImageClassification

    return ImageClassification(cfg, runtime)


def _build_llm_finetuning(cfg: DictConfig, runtime: Runtime) -> Task:
    from dualadam.tasks.llm.task import (
        LLMFineTuning,  # transformers/peft load when the model does (`llm` extra)
    )

    return LLMFineTuning(cfg, runtime)


def task_of_choice(group: str, node: DictConfig) -> str:
    """The task a ``model`` or ``dataset`` config was written for: every LLM model config sets ``model.source``
    (configs/model/), and the LLM datasets are ``llm.sources.DATASET_NAMES``; anything else is an image one."""
    if group == "model":
        return LLM if "source" in node else IMAGE
    return LLM if node.get("name") in LLM_DATASET_NAMES else IMAGE


def check_choices_fit_task(cfg: DictConfig) -> None:
    """A model or dataset of another task fails here, naming the ``task=`` choice that runs it (its own checks
    would only say that it is not a timm model or not an image dataset)."""
    for group in ("model", "dataset"):
        owner = task_of_choice(group, cfg[group])
        if owner != cfg.task:
            raise ConfigError(
                f"{group}.name={cfg[group].get('name')!r} is a {group} of task {owner}, but task={cfg.task}. Run it "
                f"with `task={owner}` (it brings that task's default model, dataset and settings), or choose a "
                f"{group} of task {cfg.task} (configs/{group}/).")


def _with_choice_fit(check: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
    def check_config(cfg: DictConfig) -> None:
        check_choices_fit_task(cfg)
        check(cfg)

    return check_config


TASKS: dict[str, TaskDefinition] = {
    IMAGE: TaskDefinition(IMAGE, _build_image_classification, _with_choice_fit(check_image_config),
                          image_holds_validation_split),
    LLM: TaskDefinition(LLM, _build_llm_finetuning, _with_choice_fit(validate_llm_config),
                        llm_holds_validation_split),
}


def task_definition(cfg: DictConfig) -> TaskDefinition:
    check_choice("task", cfg.task, TASKS, "task")
    return TASKS[cfg.task]


def validate_config(cfg: DictConfig) -> TaskDefinition:
    """The whole config, the core's keys and the task's (``validation.validate_config``); returns the task."""
    task = task_definition(cfg)
    validation.validate_config(cfg, task)
    return task


def build_task(cfg: DictConfig, runtime: Runtime) -> Task:
    return task_definition(cfg).build(cfg, runtime)


__all__ = ["TASKS", "EpochLoader", "Task", "TaskDefinition", "build_task", "check_choices_fit_task",
           "task_definition", "validate_config"]
