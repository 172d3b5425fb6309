"""Exact-match scoring of generated replies.

Answer extraction, in order:

1. the number after the last "The answer is" (the built-in task's and the GSM8K conversion's closing line),
   or after the last "####" (GSM8K's own marker);
2. otherwise the last number in the text.

Numbers may carry a sign, thousands separators and decimals ("-1,234.50"); they compare as numbers, so "42",
"42.0" and "42." match. When the reference answer is not a number, or an example has no ``answer`` (Alpaca-style
data), the whole reply is compared after normalization (case, surrounding whitespace and punctuation, runs of
spaces), so exact match there means "reproduced the reference reply".
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_MARKED = re.compile(rf"(?:answer is|####)\s*:?\s*\$?\s*({_NUMBER})", re.IGNORECASE)
_ANY_NUMBER = re.compile(_NUMBER)


def extract_answer(text: str) -> str | None:
    """The final numeric answer in a reply, as written (see the module docstring), or None if it has none."""
    marked = _MARKED.findall(text)
    if marked:
        return marked[-1]
    numbers = _ANY_NUMBER.findall(text)
    return numbers[-1] if numbers else None


def as_number(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text.replace(",", "").rstrip("."))
    except InvalidOperation:
        return None


def normalize_text(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .!?,;:")


def is_exact_match(generated: str, reference_response: str, reference_answer: str | None) -> bool:
    """Whether a generated reply gives the reference answer (numeric) or the reference reply (otherwise)."""
    expected = as_number(reference_answer)
    if expected is not None:
        found = as_number(extract_answer(generated))
        return found is not None and found == expected
    target = reference_response if reference_answer is None else reference_answer
    return normalize_text(generated) == normalize_text(target)
