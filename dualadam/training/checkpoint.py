"""Checkpoint files that are never half-written and never silently corrupt.

A checkpoint is ``torch.save``'s bytes behind a small header holding their SHA-256:

    DUALADAM-CHECKPOINT v1 <sha256 hex> <payload length>\\n<payload>

It is written atomically (``dualadam.atomic_files``: temporary file, fsync, rename), so a crash mid-write
leaves the previous checkpoint intact. Loading
checks the header, length and digest before unpickling anything: a truncated or corrupted file raises
``CorruptCheckpointError`` naming the file, instead of loading garbage or failing deep inside torch.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import numpy as np
import torch

from dualadam.atomic_files import atomic_write

MAGIC = b"DUALADAM-CHECKPOINT v1"


class CorruptCheckpointError(RuntimeError):
    """The file is not a complete checkpoint written by this package."""


def save_checkpoint(payload: dict, path: Path) -> None:
    """Atomically write ``payload`` (anything ``torch.save`` takes) to ``path``."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    header = MAGIC + b" " + hashlib.sha256(data).hexdigest().encode() + b" " + str(len(data)).encode() + b"\n"
    atomic_write(path, lambda file: (file.write(header), file.write(data)))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Read and verify a checkpoint written by ``save_checkpoint``."""
    path = Path(path)
    raw = path.read_bytes()
    newline = raw.find(b"\n")
    fields = raw[:newline].split(b" ") if newline > 0 else []
    if len(fields) != 4 or b" ".join(fields[:2]) != MAGIC:
        raise CorruptCheckpointError(f"{path} is not a dualadam checkpoint (bad header); delete it to start "
                                     "over, or set trainer.resume=false")
    digest, length, data = fields[2].decode(), int(fields[3]), raw[newline + 1:]
    if len(data) != length:
        raise CorruptCheckpointError(f"{path} is truncated ({len(data)} of {length} payload bytes); "
                                     "it was not written by a completed save. Delete it or set trainer.resume=false")
    if hashlib.sha256(data).hexdigest() != digest:
        raise CorruptCheckpointError(f"{path} is corrupted (SHA-256 mismatch); delete it or set "
                                     "trainer.resume=false")
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)


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
