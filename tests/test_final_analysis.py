"""``analysis.sharpness=true``: the trainer measures the final solution's flatness into summary.json."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from dualadam.analysis import SHARPNESS_KEYS
from dualadam.train import train
from dualadam.training.validation import ConfigError


def test_sharpness_is_measured_at_the_end_and_recorded(make_cfg):
    cfg = make_cfg("analysis.sharpness=true", "analysis.batches=2", "analysis.eig_iters=8",
                   "analysis.trace_samples=8")
    summary = train(cfg)
    on_disk = json.loads((Path(cfg.run_dir) / "summary.json").read_text())
    for key in SHARPNESS_KEYS:
        assert math.isfinite(summary["final"][key]) and on_disk["final"][key] == summary["final"][key]
    # A trained network's loss has positive curvature somewhere, and the trace estimate comes with its error.
    assert summary["final"]["sharpness/hessian_top_eig"] > 0
    assert summary["final"]["sharpness/hessian_trace_stderr"] > 0


def test_sharpness_is_off_by_default(make_cfg):
    summary = train(make_cfg())
    assert not any(key in summary["final"] for key in SHARPNESS_KEYS)


def test_bad_analysis_settings_fail_before_training(make_cfg):
    with pytest.raises(ConfigError, match="analysis.eig_iters"):
        train(make_cfg("analysis.eig_iters=0"))


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_analyze_command_writes_sharpness_and_plots_from_a_checkpoint(make_cfg, capsys):
    from dualadam.analyze import main

    first, second = make_cfg("seed=1"), make_cfg("seed=2")
    train(first)
    train(second)
    capsys.readouterr()
    main([first.run_dir, "--batches", "1", "--eig-iters", "4", "--trace-samples", "4", "--points-1d", "7",
          "--points-2d", "3", "--line-to", second.run_dir])
    run_dir = Path(first.run_dir)
    # It says what it measures, for which run, what it will cost, and shows each stage with its ETA.
    err = capsys.readouterr().err
    assert f"[analyze] {run_dir.name}" in err and "estimate" in err and "Hessian-vector product" in err
    for stage in ("Lanczos iterations", "Hutchinson probes", "1-D landscape slice", "2-D landscape surface",
                  "loss on the line"):
        assert re.search(rf"{stage}.*\d+/\d+ \[\d\d:\d\d<\d\d:\d\d", err), (stage, err)
    result = _strict_json((run_dir / "sharpness.json").read_text())
    assert result["settings"]["batches"] == 1 and result["settings"]["eig_iters"] == 4
    assert all(math.isfinite(result[key]) for key in SHARPNESS_KEYS)
    for png in ("landscape_1d.png", "landscape_2d.png", f"line_to_{Path(second.run_dir).name}.png"):
        assert (run_dir / png).read_bytes().startswith(b"\x89PNG")
    # the line starts at this run's solution and ends at the other's: different losses at the two ends
    losses, ts = result["line"]["losses"], result["line"]["ts"]  # 7 points: -0.25, 0, ..., 1, 1.25
    assert ts[1] == 0.0 and ts[-2] == 1.0 and losses[1] != losses[-2]


def test_a_measurement_that_is_not_a_number_is_written_as_null(tmp_path):
    from dualadam.analyze import write_result

    path = write_result(tmp_path, {"sharpness/hessian_top_eig": math.nan, "sharpness/hessian_trace": math.inf,
                                   "line": {"losses": [0.5, math.nan]}})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert _strict_json(text) == {"sharpness/hessian_top_eig": None, "sharpness/hessian_trace": None,
                                  "line": {"losses": [0.5, None]}}


def test_analyze_presets_give_way_to_explicit_options_and_bad_values_are_refused(capsys):
    from dualadam.analyze import PRESETS, parse_settings

    _, settings = parse_settings(["run", "--preset", "paper", "--trace-samples", "7"])
    assert settings.trace_samples == 7 and settings.eig_iters == PRESETS["paper"].eig_iters
    assert parse_settings(["run"])[1] == PRESETS["cpu"]
    with pytest.raises(SystemExit):
        parse_settings(["run", "--trace-samples", "1"])
    assert "--trace-samples=1" in capsys.readouterr().err
