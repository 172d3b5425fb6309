"""Every JSON the suite writes is strict: NaN and infinities become null, and all of it goes through one
writer (dualadam.atomic_files.strict_json), so no bare NaN reaches a file a strict parser reads."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from dualadam.atomic_files import atomic_write_json, strict_json
from dualadam.training.outputs import RunOutputs, metrics_line

REPO = Path(__file__).resolve().parents[1]


def strict_loads(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_strict_parser_rejects_what_plain_json_dumps_writes():
    with pytest.raises(ValueError, match="NaN is not JSON"):
        strict_loads(json.dumps({"loss": math.nan}))


def test_non_finite_numbers_are_written_as_null_at_any_depth(tmp_path):
    value = {"a": math.nan, "b": [1.5, -math.inf, {"c": math.inf}], "d": (math.nan, 2), "e": "NaN"}
    expected = {"a": None, "b": [1.5, None, {"c": None}], "d": [None, 2], "e": "NaN"}
    assert strict_loads(strict_json(value)) == expected
    atomic_write_json(tmp_path / "x.json", value)
    assert strict_loads((tmp_path / "x.json").read_text()) == expected


def test_run_summary_and_metrics_lines_are_strict(tmp_path):
    outputs = RunOutputs(tmp_path)
    path = outputs.write_summary({"final": {"train/loss": math.nan}})
    assert strict_loads(path.read_text()) == {"final": {"train/loss": None}}
    assert strict_loads(metrics_line({"epoch": 1, "test/loss": math.inf})) == {"epoch": 1, "test/loss": None}


def test_no_json_is_written_past_the_strict_writer():
    """A plain json.dump/json.dumps in the package, the scripts or the experiments would write NaN again."""
    plain = re.compile(r"\bjson\.dumps?\(")
    offenders = [f"{path.relative_to(REPO)}:{number}"
                 for folder in ("dualadam", "scripts", "experiments") for path in sorted((REPO / folder).rglob("*.py"))
                 if path.name != "atomic_files.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1) if plain.search(line)]
    assert offenders == [], f"use dualadam.atomic_files.strict_json / atomic_write_json instead: {offenders}"
