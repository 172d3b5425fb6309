"""Performance profiles across studies (``dualadam/reporting/profiles.py``, ``scripts/performance_profile.py``),
on synthetic study folders whose ratios are known by hand."""

from __future__ import annotations

import importlib.util
import math

import pytest

from dualadam.reporting.profiles import performance_profile
from tests.conftest import REPO
from tests.test_review_plots import is_png
from tests.test_targets import CURVES, write_folder

# Study "b": DualAdam ends higher than Adam and gets there sooner; SGD was not run.
CURVES_B = {"adam": {1: [30, 40, 45, 50], 2: [31, 41, 46, 50], 3: [29, 39, 44, 50]},
            "dualadam": {1: [40, 55, 58, 60], 2: [41, 50, 59, 60], 3: [42, 52, 57, 60]}}


def profile_script():
    spec = importlib.util.spec_from_file_location("performance_profile", REPO / "scripts" / "performance_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def folders(tmp_path):
    return [write_folder(tmp_path / "a", curves=CURVES, study="a"),
            write_folder(tmp_path / "b", curves=CURVES_B, study="b")]


def test_rho_is_the_fraction_of_studies_within_tau_of_the_best_and_a_missing_optimizer_never_is():
    profile = performance_profile({"a": {"adam": 41.0, "dualadam": 42.0, "sgd": 55.0},
                                   "b": {"adam": 51.0, "dualadam": 41.0}}, "error")
    assert profile.ratios["a"] == {"sgd": 55 / 41, "adam": 1.0, "dualadam": 42 / 41}
    assert profile.ratios["b"]["sgd"] == math.inf
    assert [profile.rho("adam", t) for t in (1.0, 1.2, 1.25)] == [0.5, 0.5, 1.0]
    assert [profile.rho("dualadam", t) for t in (1.0, 1.02, 1.03)] == [0.5, 0.5, 1.0]
    assert [profile.rho("sgd", t) for t in (1.0, 1.5, 1e9)] == [0.0, 0.5, 0.5]


def test_a_study_where_no_optimizer_reaches_its_target_is_left_out_and_named():
    profile = performance_profile({"a": {"adam": 10.0, "sgd": 30.0}, "b": {"adam": math.inf, "sgd": math.inf}},
                                  "steps")
    assert set(profile.ratios) == {"a"} and "b" in profile.skipped
    assert profile.rho("sgd", 3.0) == 1.0


def test_the_error_profile_of_two_study_folders(folders, tmp_path):
    text = profile_script().main([*map(str, folders), "--metric", "error", "--out", str(tmp_path / "out")])
    # Final test acc = final val acc - 1: study a errors Adam 41, DualAdam 42, SGD 55; study b Adam 51, DualAdam 41.
    assert "| SGD (momentum) | 0.00 | 0.00 | 0.00 | 0.50 | 0.50 | 0.50 |" in text
    assert "| Adam | 0.50 | 0.50 | 1.00 | 1.00 | 1.00 | 1.00 |" in text
    assert "| DualAdam | 0.50 | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 |" in text
    assert "| b | – | 51.00 | 41.00 |" in text
    assert is_png(tmp_path / "out" / "performance_profile.png")
    assert (tmp_path / "out" / "profile.md").read_text() == text


def test_the_steps_profile_uses_each_studys_own_target(folders, tmp_path):
    text = profile_script().main([*map(str, folders), "--out", str(tmp_path / "out")])
    # a: target val/acc 60 (Adam's median final): Adam's median 40 steps, DualAdam's 20, SGD never.
    # b: target 50: Adam 40 steps (every seed at its last epoch), DualAdam 20.
    assert "| a | never | 40 | 20 |" in text and "| b | – | 40 | 20 |" in text
    assert "| Adam | 0.00 | 0.00 | 0.00 | 0.00 | 1.00 | 1.00 |" in text
    assert "| DualAdam | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 |" in text


def test_the_profile_refuses_fewer_than_two_studies_or_a_folder_without_runs(folders, tmp_path, capsys):
    with pytest.raises(SystemExit):
        profile_script().main([str(folders[0]), "--out", str(tmp_path / "out")])
    assert "two or more studies" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        profile_script().main([str(folders[0]), str(tmp_path), "--out", str(tmp_path / "out")])
    assert "no runs.csv in" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
