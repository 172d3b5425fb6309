"""Generated blocks in Markdown files: the text between ``<!-- <name>:begin -->`` and ``<!-- <name>:end -->``
is owned by a script and rewritten by it; everything around it is left alone."""

from __future__ import annotations

import re
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def block_names(text: str, prefix: str) -> list[str]:
    """The names of the blocks in ``text`` that start with ``prefix`` (e.g. ``results:``), in order."""
    return re.findall(rf"<!-- ({re.escape(prefix)}[^\s>]+):begin -->", text)


def read_block(text: str, name: str) -> str | None:
    """The block's content without the marker lines, or None when ``text`` has no such block."""
    begin, end = markers(name)
    if begin not in text or end not in text.split(begin, 1)[1]:
        return None
    return text.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the block ``name`` holding ``content``; ValueError naming the missing markers."""
    begin, end = markers(name)
    if read_block(text, name) is None:
        raise ValueError(f"no '{begin}' ... '{end}' block: add the two marker lines where the generated text goes")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{content.strip()}\n{end}{tail}"


def rewrite_block(path: Path, name: str, content: str) -> bool:
    """Rewrite the block in the file ``path``; True when the file changed (it is not touched otherwise)."""
    text = path.read_text()
    new = replace_block(text, name, content)
    if new != text:
        path.write_text(new)
    return new != text
