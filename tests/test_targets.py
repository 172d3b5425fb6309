"""Steps to reach a target (``dualadam/reporting/targets.py``) and the protocol label of a study
(``protocols.py``), as ``make tables`` reports them."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from dualadam.reporting.aggregate import build_study_table
from dualadam.reporting.report import load_study, study_markdown, write_study_report
from dualadam.reporting.review_plots import STEPS_TO_TARGET_PNG
from dualadam.reporting.targets import (
    Target,
    TargetSpec,
    choose_target,
    first_step_at_target,
    steps_to_target,
    steps_to_target_section,
)
from tests.conftest import REPO
from tests.test_review_plots import _write_csv, is_png

STUDY = "target_fixture"
STEPS_PER_EPOCH = 10
# Per optimizer and seed, the validation accuracy after each of 4 epochs.
CURVES = {
    "adam": {1: [40, 50, 58, 60], 2: [45, 55, 59, 61], 3: [41, 52, 57, 59]},
    "dualadam": {1: [50, 60, 62, 63], 2: [52, 61, 62, 64], 3: [30, 40, 45, 50]},   # seed 3 never gets to 60
    "sgd": {1: [20, 30, 40, 45], 2: [22, 31, 41, 46], 3: [21, 32, 42, 47]},
}


def rows(curves=CURVES, lr=None, metric="val/acc", extra_runs=(), study=STUDY):
    runs, epochs = [], []
    for optimizer, seeds in curves.items():
        for seed, values in seeds.items():
            run = f"{study}/{optimizer}-seed{seed}"
            runs.append({"study": study, "optimizer": optimizer, "lr": (lr or {}).get(optimizer, 1e-3),
                         "seed": seed, "status": "completed", "epochs_completed": 4, "epochs": 4,
                         "monitor": metric, f"final/{metric}": values[-1], "final/test/acc": values[-1] - 1,
                         "commit": "abc", "dirty": False, "run": run, "setting": "{}"})
            epochs += [{"study": study, "optimizer": optimizer, "seed": seed, "run": run, "epoch": e + 1,
                        metric: v, "test/acc": v - 1, "optim/steps": (e + 1) * STEPS_PER_EPOCH}
                       for e, v in enumerate(values)]
    return [*runs, *extra_runs], epochs


def groups_and_epochs(**kwargs):
    runs, epochs = rows(**kwargs)
    return build_study_table(STUDY, runs).headline_groups(), epochs


def by_optimizer(found):
    return {item.group.optimizer: item for item in found}


def test_the_step_counted_is_the_first_evaluation_at_or_past_the_target():
    epochs = rows()[1]
    adam_seed1 = [r for r in epochs if r["run"] == f"{STUDY}/adam-seed1"]
    assert first_step_at_target(adam_seed1, Target("val/acc", 58.0, "")) == 30
    assert first_step_at_target(adam_seed1, Target("val/acc", 57.9, "")) == 30
    assert first_step_at_target(adam_seed1, Target("val/acc", 60.5, "")) is None
    assert first_step_at_target(adam_seed1, Target("val/loss", 100.0, "")) is None   # a metric not recorded


def test_a_loss_target_is_reached_from_above():
    run = [{"epoch": 1, "val/loss": 2.0, "optim/steps": 10}, {"epoch": 2, "val/loss": 0.9, "optim/steps": 20}]
    assert first_step_at_target(run, Target("val/loss", 1.0, "")) == 20


def test_default_target_is_the_references_median_final_validation_accuracy():
    groups, epochs = groups_and_epochs()
    target = choose_target(groups, epochs, reference="adam")
    assert (target.metric, target.value) == ("val/acc", 60.0)     # median of Adam's 60, 61, 59
    assert "adam" in target.how


def test_without_a_reference_run_the_target_is_the_lowest_median_final_value():
    groups, epochs = groups_and_epochs()
    assert choose_target(groups, epochs, reference="adamw").value == 46.0   # SGD's median


def test_a_set_target_and_metric_win():
    groups, epochs = groups_and_epochs()
    target = choose_target(groups, epochs, TargetSpec("test/acc", 55.0), reference="adam")
    assert (target.metric, target.value, target.how) == ("test/acc", 55.0, "as set (--target)")


def test_runs_that_never_reach_the_target_are_counted_not_dropped():
    groups, epochs = groups_and_epochs()
    found = by_optimizer(steps_to_target(groups, epochs, Target("val/acc", 60.0, "")))
    assert found["adam"].steps == {1: 40, 2: 40, 3: None}
    assert (found["adam"].n, found["adam"].reached, found["adam"].median) == (3, 2, 40.0)
    assert found["dualadam"].steps == {1: 20, 2: 20, 3: None}
    assert found["sgd"].reached == 0 and found["sgd"].median == math.inf   # the median run never got there


def test_a_seed_run_twice_gives_one_step_count():
    rerun = {"study": STUDY, "optimizer": "adam", "lr": 1e-3, "seed": 1, "status": "completed",
             "epochs_completed": 4, "epochs": 4, "monitor": "val/acc", "final/val/acc": 60.0,
             "final/test/acc": 59.0, "commit": "abc", "dirty": False, "run": f"{STUDY}/adam-seed1-a-rerun",
             "setting": '{"trainer.num_workers":2}'}
    runs, epochs = rows(extra_runs=[rerun])
    epochs += [{"study": STUDY, "optimizer": "adam", "seed": 1, "run": rerun["run"], "epoch": e + 1, "val/acc": v,
                "optim/steps": (e + 1) * STEPS_PER_EPOCH} for e, v in enumerate([40, 60, 60, 60])]
    groups = build_study_table(STUDY, runs).headline_groups()
    found = by_optimizer(steps_to_target(groups, epochs, Target("val/acc", 60.0, "")))
    assert found["adam"].steps == {1: 20, 2: 40, 3: None}     # seed 1 once: the run statistics.py keeps
    assert found["adam"].runs[1] == rerun["run"]


def test_the_section_lists_never_and_says_the_evaluations_are_per_epoch():
    groups, epochs = groups_and_epochs()
    target = Target("val/acc", 60.0, "the median final val/acc of the reference, adam")
    text = steps_to_target_section(steps_to_target(groups, epochs, target), target, epochs, lambda g: g.optimizer)
    assert "| adam | 2/3 | 40 | 1: 40, 2: 40, 3: never |" in text
    assert "| sgd | 0/3 | never |" in text
    assert "once per epoch (every 10 steps)" in text and "upper bound" in text


def test_without_a_validation_split_the_target_is_on_test_and_the_text_says_so():
    groups, epochs = groups_and_epochs(metric="test/acc")
    target = choose_target(groups, epochs, reference="adam")
    assert target.metric == "test/acc"
    text = steps_to_target_section(steps_to_target(groups, epochs, target), target, epochs, lambda g: g.optimizer)
    assert "no validation split" in text


# -------------------------------------------------------------------------- the report and the protocol


def write_folder(folder: Path, **kwargs) -> Path:
    runs, epochs = rows(**kwargs)
    folder.mkdir(parents=True)
    _write_csv(folder / "runs.csv", runs)
    _write_csv(folder / "epochs.csv", epochs)
    return folder


def test_the_study_report_draws_and_links_the_steps_to_target_plot(tmp_path):
    study = load_study(write_folder(tmp_path / STUDY))
    write_study_report(study)
    assert is_png(study.folder / STEPS_TO_TARGET_PNG)
    text = (study.folder / "table.md").read_text()
    assert f"({STEPS_TO_TARGET_PNG})" in text and "**Steps to reach the target** `val/acc` ≥ 60" in text


def test_an_untuned_study_is_labelled_with_one_lr_for_all_or_its_exceptions(tmp_path):
    study = load_study(write_folder(tmp_path / "a" / STUDY, metric="test/acc"))
    assert study.protocol.short == "paper protocol: one lr for all (0.001), no validation split, selection on test"
    assert study.protocol.text in study_markdown(study, study.folder)
    mixed = load_study(write_folder(tmp_path / "b" / STUDY, metric="test/acc", lr={"sgd": 0.1}))
    assert mixed.protocol.short.startswith("paper protocol: one lr for all (0.001; SGD (momentum) 0.1)")
    with_split = load_study(write_folder(tmp_path / "c" / STUDY))
    assert with_split.protocol.short.startswith("untuned: one lr for all (0.001), with a validation split")


def test_a_study_with_a_compare_protocol_record_is_labelled_tuned(tmp_path):
    folder = write_folder(tmp_path / STUDY)
    (folder / "protocol.json").write_text(json.dumps({
        "budget": {"trials_per_optimizer": 6, "tune_seed": 0, "confirm_seeds": [1, 2, 3, 4, 5], "n": 5},
        "score": {"metric": "val/acc"}, "sampler": {"sampler": "quasi_random", "seed": 0}}))
    study = load_study(folder)
    assert study.protocol.short == "tuned: 6 trials/optimizer on a validation split (val/acc), 5 confirming seeds"
    assert "quasi_random trials at seed 0" in study.protocol.text and "`protocol.json`, next to its tables" in study.protocol.text


def make_tables_module():
    spec = importlib.util.spec_from_file_location("make_tables", REPO / "scripts" / "make_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_tables_prints_each_studys_protocol_and_takes_a_target(tmp_path, capsys):
    write_folder(tmp_path / STUDY, metric="test/acc")
    make_tables_module().main(["--no-collect", "--results", str(tmp_path), "--no-readme", "--target", "50"])
    out = capsys.readouterr().out
    assert f"[tables] {STUDY}: protocol: paper protocol: one lr for all (0.001)" in out
    assert "`test/acc` ≥ 50 (test accuracy" in (tmp_path / STUDY / "table.md").read_text()


def test_make_tables_refuses_a_protocol_record_without_exactly_one_study(tmp_path, capsys):
    record = tmp_path / "protocol.json"
    record.write_text("{}")
    with pytest.raises(SystemExit):
        make_tables_module().main(["--no-collect", "--results", str(tmp_path), "--protocol-json", str(record)])
    assert "exactly one --study" in capsys.readouterr().err
