"""One supervised fine-tuning example: a prompt, the reference response, and the answer exact match checks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    prompt: str               # the user's message (the chat template wraps it)
    response: str             # the assistant's reference reply; the training loss is on its tokens only
    answer: str | None = None  # what exact match compares (see ``answers.py``); None: the whole response
