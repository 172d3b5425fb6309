"""Losses on response tokens, and exact-match accuracy from greedy generation.

Units: losses are mean negative log-likelihood per response token (nats); perplexity is ``exp`` of that;
accuracies are percentages of sequences, as in the image task.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dualadam.tasks.llm.answers import is_exact_match
from dualadam.tasks.llm.errors import require
from dualadam.tasks.llm.tokenization import IGNORE_INDEX


def unwrap(model: nn.Module) -> nn.Module:
    """The model under ``torch.compile`` and DistributedDataParallel wrappers (for ``generate``)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model) if isinstance(model, nn.parallel.DistributedDataParallel) else model


def response_token_stats(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """From ``logits [B, T, V]`` and ``labels [B, T]``: (summed NLL over response tokens, their count, number of
    sequences whose every response token is the argmax prediction), all 0-d tensors on the logits' device.

    A sequence counts as correct exactly when greedy decoding from its prompt would reproduce the whole reference
    response: each argmax is taken given a correct prefix, which is what greedy decoding then conditions on.
    """
    targets = labels[:, 1:]
    scored = logits[:, :-1].float()
    nll_sum = F.cross_entropy(scored.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    in_response = targets != IGNORE_INDEX
    hit = (scored.argmax(dim=-1) == targets) | ~in_response
    sequences_correct = (hit.all(dim=1) & in_response.any(dim=1)).sum()
    return nll_sum, in_response.sum(), sequences_correct


def forward_logits(model: nn.Module, batch: dict[str, Any], device: torch.device) -> tuple[Tensor, Tensor]:
    """(logits ``[B, T, V]``, labels ``[B, T]`` on ``device``) for a ``collate_for_loss`` batch."""
    input_ids = batch["input_ids"].to(device, non_blocking=True)
    attention_mask = batch["attention_mask"].to(device, non_blocking=True)
    output = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return output.logits, batch["labels"].to(device, non_blocking=True)


@torch.no_grad()
def greedy_replies(model: nn.Module, tokenizer, batch: dict[str, Any], max_new_tokens: int,
                   device: torch.device) -> list[str]:
    """Greedy continuations of a batch's left-padded prompts, decoded without special tokens."""
    transformers = require("transformers")
    prompt_ids = batch["prompt_ids"].to(device)
    config = transformers.GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    output = unwrap(model).generate(input_ids=prompt_ids, attention_mask=batch["prompt_mask"].to(device),
                                    generation_config=config)
    return tokenizer.batch_decode(output[:, prompt_ids.shape[1]:], skip_special_tokens=True)


def evaluate_batches(model: nn.Module, tokenizer, batches: Iterable[dict[str, Any]], max_new_tokens: int,
                     device: torch.device) -> dict[str, float]:
    """``loss`` (nats per response token), ``perplexity``, ``acc`` (percent exact match from greedy generation),
    ``sequence_acc`` (percent of references reproduced whole, under teacher forcing) over ``batches``."""
    nll, tokens, sequences, reproduced, matched = 0.0, 0, 0, 0, 0
    for batch in batches:
        logits, labels = forward_logits(model, batch, device)
        batch_nll, batch_tokens, batch_reproduced = response_token_stats(logits, labels)
        nll, tokens = nll + float(batch_nll), tokens + int(batch_tokens)
        reproduced += int(batch_reproduced)
        replies = greedy_replies(model, tokenizer, batch, max_new_tokens, device)
        matched += sum(is_exact_match(reply, ex.response, ex.answer) for reply, ex in zip(replies, batch["examples"]))
        sequences += len(replies)
    loss = nll / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "acc": 100.0 * matched / max(sequences, 1),
            "sequence_acc": 100.0 * reproduced / max(sequences, 1)}
