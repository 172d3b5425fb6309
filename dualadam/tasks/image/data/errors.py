"""The error raised when a dataset's files are missing, with a message that says where they must go."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the config says; the message names the folder and the layouts."""


def missing_dataset_message(title: str, folder: Path, layouts: Sequence[str], hint: str = "") -> str:
    """A message naming ``folder`` (absolute), the accepted ``layouts``, how to change the root, and ``hint``."""
    lines = [f"{title} was not found in {folder.resolve()}.",
             "Create that folder and put the files there in one of these layouts:"]
    lines += [f"  - {layout}" for layout in layouts]
    lines.append("The folder is <root>/" + folder.name + ", where <root> is `dataset.root` "
                 "(default: $DUALADAM_DATA, else ./data); override it with dataset.root=/path or "
                 "DUALADAM_DATA=/path.")
    if hint:
        lines.append(hint)
    return "\n".join(lines)
