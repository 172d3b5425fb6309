"""Check the LLM task's config (``model``, ``dataset``, ``finetune``) before anything loads.

The core's validation covers the shared keys (seed, optimizer, scheduler, trainer, logger); for
``task=llm_finetune`` the task registry hands it :func:`validate_llm_config`, and ``LLMFineTuning`` runs it
too, so these are the one home of each rule (the loaders trust them).
"""

from __future__ import annotations

import math

from dualadam.tasks.llm.errors import LLMConfigError
from dualadam.tasks.llm.finetuning import FINETUNE_METHODS
from dualadam.tasks.llm.models import DTYPES, MODEL_SOURCES
from dualadam.tasks.llm.sources import DATASET_NAMES, holds_validation
from dualadam.training.validation import invalid_value_message, is_int


def _check(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise LLMConfigError(invalid_value_message(key, value, expected))


def _is_fraction(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and 0 < value < 1


def _choice(key: str, value, choices) -> None:
    _check(value in choices, key, value, f"one of {', '.join(choices)}")


def validate_model(model) -> None:
    _choice("model.source", model.get("source"), MODEL_SOURCES)
    _choice("model.dtype", str(model.get("dtype", "float32")), tuple(DTYPES))
    if model.source == "hub":
        _check(bool(model.get("name")), "model.name", model.get("name"),
               "a Hugging Face model id (e.g. Qwen/Qwen2.5-0.5B-Instruct) or a local folder")


def validate_finetune(finetune) -> None:
    _check(finetune is not None, "finetune", None, "a finetune config: finetune=lora or finetune=full")
    _choice("finetune.method", finetune.get("method"), FINETUNE_METHODS)
    if finetune.method != "lora":
        return
    lora = finetune.lora
    _check(is_int(lora.r) and lora.r >= 1, "finetune.lora.r", lora.r, "an integer rank >= 1")
    _check(isinstance(lora.alpha, int | float) and lora.alpha > 0, "finetune.lora.alpha", lora.alpha,
           "a scale > 0 (the update is scaled by alpha / r)")
    _check(isinstance(lora.dropout, int | float) and 0 <= lora.dropout < 1, "finetune.lora.dropout", lora.dropout,
           "a probability in [0, 1)")
    targets = lora.target_modules
    _check(targets is not None and len(targets) > 0 and all(isinstance(t, str) for t in targets),
           "finetune.lora.target_modules", targets, "a non-empty list of module names, e.g. [q_proj, v_proj]")


def validate_dataset(dataset) -> None:
    _choice("dataset.name", dataset.get("name"), DATASET_NAMES)
    for key in ("max_length", "max_new_tokens", "train_eval_size"):
        _check(is_int(dataset.get(key)) and dataset.get(key) >= 1, f"dataset.{key}", dataset.get(key),
               "an integer >= 1")
    for key in ("train_size", "test_size"):
        size = dataset.get(key)
        required = dataset.name == "arithmetic"
        _check((size is None and not required) or (is_int(size) and size >= 1), f"dataset.{key}", size,
               "an integer >= 1" + ("" if required else " or null (all examples)"))
    if "test_fraction" in dataset:
        _check(_is_fraction(dataset.test_fraction), "dataset.test_fraction", dataset.test_fraction,
               "a fraction in (0, 1)")
    if dataset.name == "jsonl":
        _check(bool(dataset.get("train_file")), "dataset.train_file", dataset.get("train_file"),
               "a path to a JSONL file of {\"prompt\", \"response\"} objects")
    validate_validation_split(dataset)


def validate_validation_split(dataset) -> None:
    """``val_size`` / ``val_fraction`` / ``val_file`` (``sources`` says what each source takes)."""
    size, fraction, file = dataset.get("val_size"), dataset.get("val_fraction"), dataset.get("val_file")
    arithmetic = dataset.name == "arithmetic"
    _check(size is None or (is_int(size) and size >= 1), "dataset.val_size", size,
           "an integer >= 1, or null (no validation split)" if arithmetic else "an integer >= 1 or null (all)")
    _check(not file or dataset.name == "jsonl", "dataset.val_file", file, "null: only dataset=jsonl reads one")
    _check(not (file and fraction is not None), "dataset.val_fraction", fraction,
           "null when dataset.val_file gives the validation examples")
    if fraction is not None:
        test_share = float(dataset.get("test_fraction") or 0.0)  # both come out of one hash interval
        _check(_is_fraction(fraction) and fraction + test_share < 1, "dataset.val_fraction", fraction,
               f"a fraction in (0, 1) leaving training examples after dataset.test_fraction={test_share}")
    if arithmetic:
        _check(fraction is None or size is not None, "dataset.val_size", size,
               f"an integer >= 1: dataset.val_fraction={fraction} reserves validation problems, val_size says "
               "how many to draw")
    else:
        _check(size is None or bool(file) or fraction is not None, "dataset.val_size", size,
               "null, unless dataset.val_file or dataset.val_fraction holds validation examples out")


def validate_llm_config(cfg) -> None:
    """Raise :class:`LLMConfigError` for the first problem in ``cfg.model``, ``cfg.finetune``, ``cfg.dataset``."""
    validate_model(cfg.model)
    validate_finetune(cfg.get("finetune"))
    validate_dataset(cfg.dataset)
    smoothing = cfg.trainer.get("label_smoothing", 0.0)
    _check(not smoothing, "trainer.label_smoothing", smoothing,
           "0.0 with task=llm_finetune: it trains on the plain token cross-entropy (label smoothing is an "
           "image_classification option)")


def holds_validation_split(cfg) -> bool:
    """Whether ``cfg.dataset`` holds validation examples out (``sources.holds_validation`` says how)."""
    return holds_validation(cfg.dataset)
