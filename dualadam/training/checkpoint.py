"""Checkpoint files that are never half-written and never silently corrupt.

A checkpoint is ``torch.save``'s bytes behind a small header holding their SHA-256:

    DUALADAM-CHECKPOINT v1 <sha256 hex> <payload length>\\n<payload>

It is written atomically (``dualadam.atomic_files``: temporary file, fsync, rename), so a crash mid-write
leaves the previous checkpoint intact, and the checkpoint it replaces is kept as ``previous.pt``
(``save_checkpoint(..., previous=...)``): if the newest is ever damaged, ``load_newest_good`` falls back to
it. Loading checks the header, length and digest before unpickling anything: any damage, header included,
raises ``CorruptCheckpointError`` naming the file, instead of loading garbage or failing deep inside torch.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from dualadam.atomic_files import atomic_write

log = logging.getLogger(__name__)

MAGIC = b"DUALADAM-CHECKPOINT v1"


class CorruptCheckpointError(RuntimeError):
    """The file is not a complete checkpoint written by this package."""


def save_checkpoint(payload: dict, path: Path, *, previous: Path | None = None) -> None:
    """Atomically write ``payload`` (anything ``torch.save`` takes) to ``path``. With ``previous``, the
    checkpoint ``path`` held until now is moved there first (a crash between the two steps leaves only
    ``previous``, which ``load_newest_good`` then reads)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    header = MAGIC + b" " + hashlib.sha256(data).hexdigest().encode() + b" " + str(len(data)).encode() + b"\n"
    if previous is not None and Path(path).is_file():
        os.replace(path, previous)
    atomic_write(path, lambda file: (file.write(header), file.write(data)))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Read and verify a checkpoint written by ``save_checkpoint``; any damage is ``CorruptCheckpointError``."""
    path = Path(path)
    raw = path.read_bytes()
    newline = raw.find(b"\n")
    fields = raw[:newline].split(b" ") if newline > 0 else []
    if len(fields) != 4 or b" ".join(fields[:2]) != MAGIC or not _is_header(fields[2], fields[3]):
        raise CorruptCheckpointError(f"{path} is not a dualadam checkpoint (bad header); delete it to start "
                                     "over, or set trainer.resume=false")
    digest, length, data = fields[2].decode(), int(fields[3]), raw[newline + 1:]
    if len(data) != length:
        raise CorruptCheckpointError(f"{path} is truncated ({len(data)} of {length} payload bytes); "
                                     "it was not written by a completed save. Delete it or set trainer.resume=false")
    if hashlib.sha256(data).hexdigest() != digest:
        raise CorruptCheckpointError(f"{path} is corrupted (SHA-256 mismatch); delete it or set "
                                     "trainer.resume=false")
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as error:  # verified bytes that do not unpickle: written by something else
        raise CorruptCheckpointError(f"{path} passed its checksum but cannot be read ({error}); delete it or "
                                     "set trainer.resume=false") from error
    if not isinstance(payload, dict):
        raise CorruptCheckpointError(f"{path} holds a {type(payload).__name__}, not a checkpoint")
    return payload


def _is_header(digest: bytes, length: bytes) -> bool:
    return len(digest) == 64 and all(c in b"0123456789abcdef" for c in digest) and length.isdigit()


def load_newest_good(path: Path, previous: Path) -> tuple[dict | None, Path | None, list[CorruptCheckpointError]]:
    """The newest checkpoint that verifies: ``path``, else ``previous`` (with a warning). Returns the payload
    (None when neither file exists or both are damaged), the file it came from, and the errors met."""
    errors = []
    for candidate in (Path(path), Path(previous)):
        if not candidate.is_file():
            continue
        try:
            payload = load_checkpoint(candidate)
        except CorruptCheckpointError as error:
            errors.append(error)
            continue
        if errors:
            log.warning("%s; resuming from the previous checkpoint %s instead", errors[0], candidate)
        return payload, candidate, errors
    return None, None, errors


def rng_states() -> dict:
    """Every random number generator a run draws from: python, numpy, torch CPU and all CUDA devices."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
