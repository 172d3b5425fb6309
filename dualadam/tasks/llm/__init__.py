"""LLM fine-tuning with DualAdam and the baselines: the paper's second task, on a real pretrained model.

Importing this package needs only the base install; ``transformers``, ``peft`` and ``gguf`` (the ``llm`` extra)
are imported when a model is loaded, with an install hint if they are missing. Entry points:

- ``LLMFineTuning`` (``task.py``): the task the shared trainer runs for ``task=llm_finetune``.
- ``validate_llm_config`` (``config.py``): the config checks for that task.
- ``load_causal_lm``, ``apply_finetuning``, ``trainable_parameters``: a model ready for any optimizer.
- ``arithmetic_problems``, ``load_splits``: the data; ``extract_answer``, ``is_exact_match``: the scoring.
"""

from dualadam.tasks.llm.answers import extract_answer, is_exact_match
from dualadam.tasks.llm.arithmetic import arithmetic_problems
from dualadam.tasks.llm.config import validate_llm_config
from dualadam.tasks.llm.errors import LLMConfigError, LLMSetupError
from dualadam.tasks.llm.examples import Example
from dualadam.tasks.llm.finetuning import apply_finetuning, trainable_parameters
from dualadam.tasks.llm.models import load_causal_lm
from dualadam.tasks.llm.sources import load_splits
from dualadam.tasks.llm.task import LLMFineTuning

__all__ = [
    "Example", "LLMConfigError", "LLMFineTuning", "LLMSetupError", "apply_finetuning", "arithmetic_problems",
    "extract_answer", "is_exact_match", "load_causal_lm", "load_splits", "trainable_parameters",
    "validate_llm_config",
]
