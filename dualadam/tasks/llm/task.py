"""LLM fine-tuning as a task of the shared trainer (see ``dualadam.training.task.Task``).

Reads ``cfg.model`` (which LM, see ``models.py``), ``cfg.finetune`` (LoRA or full), ``cfg.dataset`` (which
examples, sequence lengths, generation budget), ``cfg.trainer.batch_size`` / ``eval_batch_size`` and
``cfg.seed``. The metrics it feeds the trainer's contract:

- ``train/loss``: mean NLL per response token of each training batch (nats), averaged over sequences.
- ``train/acc``: percent of training sequences whose whole reference response is the model's argmax under
  teacher forcing, i.e. that greedy decoding would reproduce token for token. Generating during training would
  cost more than the step itself, so this is the training-time stand-in for exact match (stricter: the whole
  reply, not only the answer).
- ``train_eval/*``, ``test/*`` and, with a validation split (``sources``), ``val/*`` (``evaluate``): ``loss``
  per response token, ``perplexity = exp(loss)``,
  ``acc`` = percent exact-match answers from greedy generation (``answers.py`` says how answers are read), and
  ``sequence_acc``, the teacher-forced whole-reply measure that ``train/acc`` uses.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from dualadam.tasks.llm.config import validate_llm_config
from dualadam.tasks.llm.evaluation import evaluate_batches, forward_logits, response_token_stats
from dualadam.tasks.llm.finetuning import apply_finetuning, load_trainable_state_dict, trainable_state_dict
from dualadam.tasks.llm.loaders import PromptResponseLoader, evaluation_batches
from dualadam.tasks.llm.models import load_causal_lm
from dualadam.tasks.llm.sources import load_splits
from dualadam.tasks.llm.tokenization import EncodedExample, encode_examples, ensure_chat_template


def train_eval_subset(encoded: Sequence[EncodedExample], size: int, seed: int) -> list[EncodedExample]:
    """A fixed, seeded subset of the training examples (all of them if ``size`` exceeds their number)."""
    if size >= len(encoded):
        return list(encoded)
    chosen = sorted(random.Random(f"train_eval/{seed}").sample(range(len(encoded)), size))
    return [encoded[i] for i in chosen]


class LLMFineTuning:
    """Batches are dicts of int64 tensors ``input_ids``, ``attention_mask``, ``labels`` ``[B, T]`` (labels
    ``-100`` outside the response); evaluation batches add left-padded prompts and the source examples."""

    # ``evaluate`` returns these beside "loss" and "acc"; a trainer may log them as "<split>/<key>".
    extra_eval_metrics = ("perplexity", "sequence_acc")

    def __init__(self, cfg, runtime):
        validate_llm_config(cfg)  # also when built without the trainer's validation (cost.py, tests)
        self.runtime = runtime
        model, self.tokenizer = load_causal_lm(cfg.model)
        ensure_chat_template(self.tokenizer)
        self.model = apply_finetuning(model, cfg.finetune).to(runtime.device)
        data = cfg.dataset
        splits = load_splits(data)
        system_prompt, max_length = data.get("system_prompt"), int(data.max_length)

        def encoded(examples, split: str) -> list[EncodedExample]:
            return encode_examples(self.tokenizer, examples, system_prompt, max_length, split)

        train_encoded, test_encoded = encoded(splits.train, "train"), encoded(splits.test, "test")
        pad_id = self.tokenizer.pad_token_id
        self.train_loader = PromptResponseLoader(train_encoded, int(cfg.trainer.batch_size), pad_id, int(cfg.seed),
                                                 rank=runtime.rank, world_size=runtime.world_size)
        train_eval = train_eval_subset(train_encoded, int(data.train_eval_size), int(data.get("data_seed", 0)))
        eval_batch_size = int(cfg.trainer.eval_batch_size)
        val = {} if splits.val is None else {"val": encoded(splits.val, "val")}
        self.eval_loaders = {split: evaluation_batches(examples, eval_batch_size, pad_id) for split, examples
                             in {"train_eval": train_eval, **val, "test": test_encoded}.items()}
        self.max_new_tokens = int(data.max_new_tokens)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Only the tensors that train: with LoRA the adapters (3.7 MB for SmolLM2-135M, not 540 MB). The frozen
        base weights come back from the model's source when the run resumes; the checkpoint's config hash pins
        that source (for a hub model, pin ``model.revision`` too, or a moved branch changes the base)."""
        return trainable_state_dict(self.model)

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        load_trainable_state_dict(self.model, state)

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
        logits, labels = forward_logits(model, batch, self.runtime.device)
        nll_sum, tokens, sequences_correct = response_token_stats(logits, labels)
        return nll_sum / tokens.clamp_min(1), sequences_correct, labels.shape[0]

    def evaluate(self, model: nn.Module, loader: Iterable[dict[str, Any]]) -> dict[str, float]:
        return evaluate_batches(model, self.tokenizer, loader, self.max_new_tokens, self.runtime.device)
