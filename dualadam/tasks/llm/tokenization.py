"""Chat-formatted token sequences whose labels cover the response only, and their padded batches.

A sequence is ``prompt_ids + response_ids``: the chat template rendered with the generation prompt ("...
<|im_start|>assistant\\n"), then the rest of the template rendered with the reply (the reply, the end-of-turn
token, the template's trailing text). The two parts are tokenized separately, so the boundary is exact and the
prompt the model is trained on is token for token the prompt it generates from at evaluation.

Labels follow the Hugging Face convention: aligned with ``input_ids``, ``-100`` (ignored) on prompt and padding
positions; the model's logits at position ``t`` are scored against ``labels[t + 1]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dualadam.tasks.llm.errors import LLMSetupError
from dualadam.tasks.llm.examples import Example

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # cross_entropy's default ignore_index

# For tokenizers without a chat template (e.g. the tiny test tokenizer): role markers, and the tokenizer's own
# end-of-sequence token closing each turn, so a fine-tuned model learns to stop.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def ensure_chat_template(tokenizer) -> None:
    """Give a tokenizer without a chat template :data:`FALLBACK_CHAT_TEMPLATE` (instruct models keep theirs)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.eos_token_id is None:
        raise LLMSetupError("The tokenizer has no end-of-sequence token; fine-tuning needs one to end replies.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padded positions are masked, so any id works


def chat_messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    """The conversation for one prompt; ``system_prompt`` None keeps the template's own default system turn."""
    system = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return [*system, {"role": "user", "content": prompt}]


@dataclass(frozen=True)
class EncodedExample:
    input_ids: tuple[int, ...]   # prompt then response tokens
    prompt_length: int           # input_ids[:prompt_length] is the prompt the model generates from
    example: Example


def encode_example(tokenizer, example: Example, system_prompt: str | None) -> EncodedExample:
    messages = chat_messages(example.prompt, system_prompt)
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": example.response}], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise LLMSetupError("This tokenizer's chat template renders the conversation differently once the reply is "
                            "added, so the response tokens cannot be located; use a template whose generation "
                            f"prompt is a prefix of the full conversation.\nPrompt: {prompt_text!r}\n"
                            f"Full: {full_text!r}")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    return EncodedExample(tuple(prompt_ids) + tuple(response_ids), len(prompt_ids), example)


def encode_examples(tokenizer, examples: Sequence[Example], system_prompt: str | None, max_length: int,
                    what: str) -> list[EncodedExample]:
    """Encode and fit to ``max_length`` tokens: a too-long response is cut (its loss covers what remains); an
    example whose prompt alone leaves no room for a response token is dropped. Both are counted in the log."""
    kept, cut, dropped = [], 0, 0
    for example in examples:
        encoded = encode_example(tokenizer, example, system_prompt)
        if encoded.prompt_length >= max_length:
            dropped += 1
            continue
        if len(encoded.input_ids) > max_length:
            cut += 1
            encoded = EncodedExample(encoded.input_ids[:max_length], encoded.prompt_length, example)
        kept.append(encoded)
    if cut or dropped:
        log.warning("%s: %d of %d examples cut to dataset.max_length=%d tokens, %d dropped (prompt too long)",
                    what, cut, len(examples), max_length, dropped)
    if not kept:
        raise LLMSetupError(f"{what}: every prompt is longer than dataset.max_length={max_length} tokens; raise it")
    return kept


def labels_for(encoded: EncodedExample) -> list[int]:
    """``input_ids`` with the prompt positions replaced by :data:`IGNORE_INDEX`."""
    ids = list(encoded.input_ids)
    return [IGNORE_INDEX] * encoded.prompt_length + ids[encoded.prompt_length:]


def collate_for_loss(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels``, each int64 ``[B, T]`` with T the longest
    sequence in the batch."""
    length = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, encoded in enumerate(batch):
        n = len(encoded.input_ids)
        input_ids[row, :n] = torch.tensor(encoded.input_ids)
        labels[row, :n] = torch.tensor(labels_for(encoded))
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_prompts(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, Tensor]:
    """Left-padded prompts for batched generation, ``prompt_ids`` and ``prompt_mask`` int64 ``[B, P]``: new
    tokens are appended on the right, so every row's prompt must end at the same column."""
    length = max(e.prompt_length for e in batch)
    prompt_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, encoded in enumerate(batch):
        n = encoded.prompt_length
        prompt_ids[row, length - n:] = torch.tensor(encoded.input_ids[:n])
        prompt_mask[row, length - n:] = 1
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask}
