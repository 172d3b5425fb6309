"""``analysis.sharpness=true``: the trainer measures the final solution's flatness into summary.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dualadam.analysis import SHARPNESS_KEYS
from dualadam.training.run import train
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
