"""Files that are either completely written or not there at all (checkpoints, summaries, run records,
decoded-pixel caches): the one place a file is written atomically, and the one place JSON is made strict.

Write to a uniquely named temporary file in the same folder, flush and fsync it, then rename it over the
target: ``os.replace`` is atomic on POSIX, so a crash mid-write leaves the previous file (or none), never a
half-written one, and concurrent writers never share a temporary file.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMPORARY_NAME = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")   # what atomic_write names its temporary files


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file, then move it to ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """``atomic_write`` for a text file (UTF-8)."""
    atomic_write(path, lambda file: file.write(text.encode()))


def json_safe(value):
    """``value`` with every NaN and infinity replaced by None (JSON ``null``): JSON has no NaN, and a file
    holding a bare ``NaN`` is rejected by strict parsers (JavaScript, jq, most other languages)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def strict_json(value, **dumps_options) -> str:
    """``json.dumps`` of :func:`json_safe` ``(value)`` with ``allow_nan=False``: what every JSON the suite
    writes goes through, so a non-finite number that slips past the cleaning raises instead of writing NaN."""
    return json.dumps(json_safe(value), allow_nan=False, **dumps_options)


def atomic_write_json(path: Path, value, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """``value`` as strict JSON (NaN and infinities as null) plus a newline, written atomically."""
    atomic_write_text(path, strict_json(value, indent=indent, sort_keys=sort_keys) + "\n")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of writes that a crash interrupted (``.<name>.<uuid>.tmp``) in ``folder``.
    Only call it while no other process can be writing there (a run under its lock)."""
    stale = [path for path in Path(folder).glob(".*.tmp") if TEMPORARY_NAME.fullmatch(path.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def append_line_durably(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` and fsync it, so the line is on disk before whatever the
    caller writes next (a checkpoint that counts on it)."""
    with open(path, "a") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem, where it is best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
