"""One supervised fine-tuning example (a prompt, the reference response, and the answer exact match checks), and
which split an example belongs to.

An example's split is a pure function of its identity: a SHA-256 hash mapped to [0, 1).

The interval is cut into ``[0, test_fraction)`` for test, ``[test_fraction, test_fraction + val_fraction)``
for validation, and the rest for training. With ``val_fraction = 0`` the cut is exactly the two-way split the
studies were run with, so asking for no validation split changes no train or test item.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    prompt: str               # the user's message (the chat template wraps it)
    response: str             # the assistant's reference reply; the training loss is on its tokens only
    answer: str | None = None  # what exact match compares (see ``answers.py``); None: the whole response


def hash_position(identity: str) -> float:
    """A uniform-looking number in [0, 1) fixed by ``identity`` (the first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big") / 2**64


def split_of_identity(identity: str, test_fraction: float, val_fraction: float = 0.0) -> str:
    """``"test"``, ``"val"`` or ``"train"`` for the item whose identity is ``identity`` (see the module)."""
    position = hash_position(identity)
    if position < test_fraction:
        return "test"
    return "val" if position < test_fraction + val_fraction else "train"
