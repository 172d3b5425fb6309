"""Where fine-tuning examples come from: the built-in arithmetic task, local JSONL files, HF datasets by name.

``load_splits(dataset_cfg) -> Splits``: train, test and (when asked for) validation lists of :class:`Example`.
Each source keeps its train and test examples disjoint: the arithmetic task splits by a hash of the problem,
single-split sources (Alpaca, a lone JSONL file) by a hash of the prompt, so a prompt is in one split only;
GSM8K and paired JSONL files use their own given splits.

A validation split is held out of the training examples, never trained on (no key: none, as before):

- arithmetic: ``dataset.val_size`` problems from a further ``dataset.val_fraction`` (default 0.1) of all
  problems, by the same hash (``arithmetic.split_of``); the test problems do not change.
- JSONL: ``dataset.val_file``, or ``dataset.val_fraction`` of the training file by prompt hash.
- GSM8K, Alpaca: ``dataset.val_fraction`` of the training examples by prompt hash.

``dataset.val_size`` takes a seeded subset of the validation examples (required for arithmetic).
"""

from __future__ import annotations

import importlib
import json
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dualadam.tasks.llm.arithmetic import arithmetic_problems
from dualadam.tasks.llm.errors import LLMConfigError, LLMSetupError
from dualadam.tasks.llm.examples import Example, split_of_identity

DATASET_NAMES = ("arithmetic", "jsonl", "gsm8k", "alpaca")
DEFAULT_VAL_FRACTION = 0.1  # arithmetic: share of all problems reserved for validation when val_size is set
JSONL_FORMAT = ('one JSON object per line, either {"prompt": ..., "response": ..., "answer": optional} or '
                'Alpaca-style {"instruction": ..., "input": optional, "output": ...}')


def example_from_record(record: Mapping, where: str) -> Example:
    """A JSONL or Alpaca-style record as an example; ``where`` (file:line) goes into the error message."""
    if "prompt" in record and "response" in record:
        answer = record.get("answer")
        return Example(str(record["prompt"]), str(record["response"]), None if answer is None else str(answer))
    if "instruction" in record and "output" in record:
        context = str(record.get("input") or "").strip()
        prompt = str(record["instruction"]) + (f"\n\n{context}" if context else "")
        return Example(prompt, str(record["output"]))
    raise LLMConfigError(f"{where}: keys {sorted(record)} are not a fine-tuning example; expected {JSONL_FORMAT}")


def gsm8k_example(record: Mapping) -> Example:
    """GSM8K's ``answer`` is the worked solution with ``<<48/2=24>>`` calculator notes and a final ``#### 72``;
    the response keeps the solution without the notes and closes with "The answer is 72."."""
    solution, final = str(record["answer"]).rsplit("####", 1)
    final = final.strip().replace(",", "")
    worked = re.sub(r"<<[^>]*>>", "", solution).strip()
    return Example(str(record["question"]), f"{worked}\nThe answer is {final}.", final)


def read_jsonl(path: str | Path) -> list[Example]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise LLMSetupError(f"JSONL file {str(path)!r} not found. Put the data there ({JSONL_FORMAT}) or point "
                            f"dataset.train_file / dataset.test_file at it.")
    examples = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise LLMConfigError(f"{path}:{number} is not valid JSON ({error}); expected {JSONL_FORMAT}") from None
            examples.append(example_from_record(record, f"{path}:{number}"))
    if not examples:
        raise LLMConfigError(f"{path} holds no examples; expected {JSONL_FORMAT}")
    return examples


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    test: list[Example]
    val: list[Example] | None = None  # held out of the training examples; None when the config asks for none


def holds_validation(cfg: Mapping) -> bool:
    """Whether the dataset config ``cfg`` asks for a validation split (see the module docstring)."""
    if cfg.get("name") == "arithmetic":
        return cfg.get("val_size") is not None
    return bool(cfg.get("val_file")) or cfg.get("val_fraction") is not None


def split_by_prompt_hash(examples: Iterable[Example], test_fraction: float,
                         val_fraction: float = 0.0) -> dict[str, list[Example]]:
    """``{"train", "val", "test"}``: which one an example joins is a SHA-256 hash of its prompt
    (``examples.split_of_identity``), so duplicated prompts always land in the same split."""
    parts: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for example in examples:
        parts[split_of_identity(example.prompt, test_fraction, val_fraction)].append(example)
    return parts


def load_hf_split(path: str, name: str | None, split: str) -> list[Mapping]:
    """Rows of a Hugging Face dataset split (needs the `datasets` package and the network, or a local cache)."""
    try:
        datasets = importlib.import_module("datasets")
    except ImportError:
        raise LLMSetupError(f"dataset {path!r} comes from the Hugging Face Hub and needs the `datasets` package: "
                            "`pip install datasets`, with network access (or a cache filled by an earlier "
                            "online run). Offline, use dataset=arithmetic or a local JSONL file.") from None
    try:
        return list(datasets.load_dataset(path, name, split=split))
    except Exception as error:  # the hub raises many types (connection, missing repo, no cache): all fatal here
        raise LLMSetupError(f"Could not load the Hugging Face dataset {path!r} (config {name!r}, split {split!r}): "
                            f"{type(error).__name__}: {error}. It needs network access or a local cache "
                            "(HF_DATASETS_OFFLINE=1 uses the cache only). Offline, use dataset=arithmetic or a "
                            "local JSONL file (dataset=jsonl).") from None


def take(examples: list[Example], size: int | None, seed: int, what: str) -> list[Example]:
    """A seeded random subset of ``size`` examples (all of them, in file order, if ``size`` is null)."""
    if size is None:
        return examples
    if size > len(examples):
        raise LLMConfigError(f"dataset.{what}_size={size} but only {len(examples)} {what} examples exist; "
                             f"lower it or set it to null (all)")
    return random.Random(f"{what}/{seed}").sample(examples, size)


def _arithmetic_splits(cfg: Mapping, seed: int) -> Splits:
    test_fraction = float(cfg.get("test_fraction", 0.2))
    val_size = cfg.get("val_size")
    val_fraction = 0.0 if val_size is None else float(cfg.get("val_fraction", DEFAULT_VAL_FRACTION))

    def draw(split: str, size) -> list[Example]:
        return arithmetic_problems(split, int(size), seed, test_fraction, val_fraction)

    return Splits(draw("train", cfg["train_size"]), draw("test", cfg["test_size"]),
                  None if val_size is None else draw("val", val_size))


def _source_splits(cfg: Mapping) -> Splits:
    """All examples of a file or hub source, before any size is applied."""
    name, val_fraction = cfg["name"], float(cfg.get("val_fraction") or 0.0)
    if name == "jsonl":
        if cfg.get("test_file"):
            parts = split_by_prompt_hash(read_jsonl(cfg["train_file"]), 0.0, val_fraction)
            parts["test"] = read_jsonl(cfg["test_file"])
        else:
            parts = split_by_prompt_hash(read_jsonl(cfg["train_file"]), float(cfg.get("test_fraction", 0.1)),
                                         val_fraction)
        if cfg.get("val_file"):
            parts["val"] = read_jsonl(cfg["val_file"])
    elif name == "gsm8k":
        path, config = cfg.get("hf_path", "openai/gsm8k"), cfg.get("hf_config", "main")
        train = [gsm8k_example(r) for r in load_hf_split(path, config, "train")]
        parts = split_by_prompt_hash(train, 0.0, val_fraction)
        parts["test"] = [gsm8k_example(r) for r in load_hf_split(path, config, "test")]
    elif name == "alpaca":
        rows = load_hf_split(cfg.get("hf_path", "tatsu-lab/alpaca"), cfg.get("hf_config"), "train")
        records = [example_from_record(row, f"{cfg.get('hf_path')} row {i}") for i, row in enumerate(rows)]
        parts = split_by_prompt_hash(records, float(cfg.get("test_fraction", 0.02)), val_fraction)
    else:
        raise LLMConfigError(f"Unknown LLM dataset dataset.name={name!r}; valid: {', '.join(DATASET_NAMES)}")
    return Splits(parts["train"], parts["test"], parts["val"] if holds_validation(cfg) else None)


def load_splits(cfg: Mapping) -> Splits:
    """Train, test and validation examples as ``cfg`` (the ``dataset`` config) says; sizes and subsets applied."""
    seed = int(cfg.get("data_seed", 0))
    if cfg["name"] == "arithmetic":
        return _arithmetic_splits(cfg, seed)
    found = _source_splits(cfg)
    return Splits(take(found.train, cfg.get("train_size"), seed, "train"),
                  take(found.test, cfg.get("test_size"), seed, "test"),
                  None if found.val is None else take(found.val, cfg.get("val_size"), seed, "val"))
