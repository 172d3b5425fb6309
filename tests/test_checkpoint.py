"""Checkpoint files: atomic, verified, and carrying every RNG state."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from dualadam.training.checkpoint import (
    CorruptCheckpointError,
    load_checkpoint,
    load_newest_good,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)


def test_round_trip(tmp_path):
    payload = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "best": {"test/acc": 51.2}}
    save_checkpoint(payload, tmp_path / "last.pt")
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert torch.equal(loaded["model"]["w"], payload["model"]["w"])
    assert loaded["epoch"] == 3 and loaded["best"] == {"test/acc": 51.2}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_truncated_file_is_detected(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        load_checkpoint(path)


def test_flipped_byte_is_detected(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.randn(1000)}, path)
    raw = bytearray(path.read_bytes())
    raw[-50] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match="SHA-256"):
        load_checkpoint(path)


def test_foreign_file_is_rejected(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"w": torch.zeros(2)}, path)  # a plain torch file, not ours
    with pytest.raises(CorruptCheckpointError, match="bad header"):
        load_checkpoint(path)


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)

    def crash(*args):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the failed write cleaned up after itself


def test_rng_states_restore_every_generator():
    states = rng_states()
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_states(states)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


@pytest.mark.parametrize("position, byte", [(0, b"X"), (23, b"\xff"), (30, b"g"), (88, b"x"), (89, b" ")])
def test_any_damage_to_the_header_is_a_corrupt_checkpoint(tmp_path, position, byte):
    """Magic, the digest (a non-hex or non-UTF-8 byte) and the length field: all the clear error."""
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.randn(10)}, path)
    raw = bytearray(path.read_bytes())
    raw[position:position + 1] = byte
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint(path)


def test_a_save_keeps_the_checkpoint_it_replaces_as_the_previous_one(tmp_path):
    path, previous = tmp_path / "last.pt", tmp_path / "previous.pt"
    save_checkpoint({"epoch": 1}, path, previous=previous)
    save_checkpoint({"epoch": 2}, path, previous=previous)
    assert load_checkpoint(path)["epoch"] == 2 and load_checkpoint(previous)["epoch"] == 1
    path.write_bytes(path.read_bytes()[:-3])
    payload, used, errors = load_newest_good(path, previous)
    assert payload["epoch"] == 1 and used == previous and "truncated" in str(errors[0])
