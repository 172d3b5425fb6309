"""The reviewer's figures (dualadam/reporting/review_plots.py), drawn from small handmade runs.csv, epochs.csv
and protocol.json fixtures: each is written, a rerun gives the same bytes, and missing data degrades to a
readable figure instead of an error."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from dualadam.reporting.report import load_study, study_markdown, write_study_report
from dualadam.reporting.review_plots import (
    SCHEDULES_PNG,
    SEEDS_PNG,
    SENSITIVITY_PNG,
    draw_sensitivity,
    plot_schedules,
    plot_seeds,
)

STUDY = "review_fixture"
FINAL_ACC = {"adam": [61.0, 63.5, 62.0], "adam_matched_warmup": [62.0, 63.0, 62.5], "dualadam": [63.0, 64.5, 62.5]}
EPOCHS, STEPS_PER_EPOCH = 4, 10
SPACES = {"lr": (1e-4, 3e-2), "blend_fraction": (0.02, 0.5), "warmup_fraction": (0.02, 0.5)}


def _lr_alpha(optimizer: str, epoch: int) -> tuple[float, float | None]:
    """A cosine lr, and DualAdam's alpha blending from 1 to 0 over the first half (the others have none)."""
    lr = 1e-3 * 0.5 * (1 + math.cos(math.pi * epoch / (EPOCHS + 1)))
    alpha = max(0.0, 1.0 - epoch / (EPOCHS / 2)) if optimizer == "dualadam" else None
    return lr, alpha


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])


def write_study(folder: Path, with_alpha: bool = True) -> Path:
    runs, epochs = [], []
    for optimizer, finals in FINAL_ACC.items():
        for seed, final in enumerate(finals):
            run = f"{STUDY}/{optimizer}-seed{seed}"
            runs.append({"study": STUDY, "optimizer": optimizer, "lr": 1e-3, "seed": seed, "status": "completed",
                         "epochs_completed": EPOCHS, "epochs": EPOCHS, "monitor": "test/acc",
                         "final/test/acc": final, "final/train_eval/acc": final + 5, "final/gap/acc": 5.0,
                         "commit": "abc", "dirty": "false", "run": run, "setting": '{"optimizer.lr":0.001}'})
            for epoch in range(1, EPOCHS + 1):
                lr, alpha = _lr_alpha(optimizer, epoch)
                row = {"study": STUDY, "optimizer": optimizer, "seed": seed, "run": run, "epoch": epoch,
                       "test/acc": final * epoch / EPOCHS, "gap/acc": 1.0, "lr": lr,
                       "optim/steps": epoch * STEPS_PER_EPOCH}
                if with_alpha:
                    row["optim/inverse_adam_rate"] = alpha
                epochs.append(row)
    folder.mkdir(parents=True)
    _write_csv(folder / "runs.csv", runs)
    _write_csv(folder / "epochs.csv", epochs)
    return folder


def _trial(number: int, lr: float, score: float, fraction: tuple[str, float] | None = None,
           state: str = "COMPLETE") -> dict:
    params = {"lr": lr, **dict([fraction] if fraction else [])}
    return {"number": number, "params": params, "overrides": {"optimizer.lr": lr}, "state": state,
            "score": score if state == "COMPLETE" else None, "run_dir": f"sweep/tune-{number}"}


def protocol_fixture() -> dict:
    """The shape ``dualadam.compare.protocol.protocol_record`` writes, with three optimizers' trials."""
    trials = {
        "adam": [_trial(0, 3e-4, 55.0), _trial(1, 1e-3, 60.0), _trial(2, 1e-2, 41.0), _trial(3, 3e-2, 0, None, "FAIL")],
        "dualadam": [_trial(0, 3e-4, 56.0, ("blend_fraction", 0.05)), _trial(1, 1e-3, 61.5, ("blend_fraction", 0.3)),
                     _trial(2, 1e-2, 43.0, ("blend_fraction", 0.1))],
        "adam_matched_warmup": [_trial(0, 3e-4, 55.5, ("warmup_fraction", 0.05)),
                                _trial(1, 1e-3, 60.5, ("warmup_fraction", 0.2))],
    }
    selections = {name: {k: v for k, v in max((t for t in ts if t["state"] == "COMPLETE"),
                                              key=lambda t: t["score"]).items() if k != "state"}
                  for name, ts in trials.items()}
    return {"study": STUDY, "budget": {"trials_per_optimizer": 4, "tune_seed": 0, "confirm_seeds": [1, 2],
                                       "n": 2, "parallel": 1},
            "score": {"metric": "val/acc", "epoch": "final", "direction": "maximize"}, "total_steps": 40,
            "search_spaces": {name: {param: {"key": param, "low": low, "high": high, "log": True, "as": "value"}
                                     for param, (low, high) in SPACES.items() if param in space}
                              for name, space in (("adam", "lr"), ("dualadam", "lr blend_fraction"),
                                                  ("adam_matched_warmup", "lr warmup_fraction"))},
            "trials": trials, "selections": selections, "confirmation": {}}


def is_png(path: Path) -> bool:
    return path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def draw_twice(tmp_path: Path, draw) -> tuple[bytes, bytes]:
    first, second = draw(tmp_path / "a.png"), draw(tmp_path / "b.png")
    assert is_png(first) and is_png(second)
    return first.read_bytes(), second.read_bytes()


@pytest.fixture
def study(tmp_path):
    return load_study(write_study(tmp_path / "results" / STUDY))


def test_seed_plot_is_written_and_byte_identical_on_rerun(study, tmp_path):
    groups = study.table.headline_groups()
    first, second = draw_twice(tmp_path, lambda p: plot_seeds(STUDY, groups, study.table.grouping_keys, p))
    assert first == second and b"matplotlib" not in first


def test_schedule_plot_is_written_and_byte_identical_on_rerun(study, tmp_path):
    groups = study.table.headline_groups()
    first, second = draw_twice(tmp_path, lambda p: plot_schedules(STUDY, groups, study.epoch_rows, p))
    assert first == second


def test_schedule_plot_without_any_alpha_column_still_draws_the_lr(tmp_path):
    bare = load_study(write_study(tmp_path / "results" / STUDY, with_alpha=False))
    assert all("optim/inverse_adam_rate" not in row for row in bare.epoch_rows)
    with_alpha = load_study(write_study(tmp_path / "with_alpha" / STUDY))
    groups = bare.table.headline_groups()
    path = plot_schedules(STUDY, groups, bare.epoch_rows, tmp_path / "bare.png")
    full = plot_schedules(STUDY, with_alpha.table.headline_groups(), with_alpha.epoch_rows, tmp_path / "full.png")
    assert is_png(path) and path.read_bytes() != full.read_bytes()


def test_seed_plot_draws_a_group_with_one_seed_without_an_interval(tmp_path):
    folder = write_study(tmp_path / "results" / STUDY)
    lines = (folder / "runs.csv").read_text().splitlines()
    (folder / "runs.csv").write_text("\n".join(line for line in lines if "dualadam-seed1" not in line
                                               and "dualadam-seed2" not in line) + "\n")
    one_seed = load_study(folder)
    assert [len(g.averaged) for g in one_seed.table.headline_groups()] == [3, 3, 1]
    assert is_png(plot_seeds(STUDY, one_seed.table.headline_groups(), [], tmp_path / "one.png"))


def test_study_report_writes_and_links_the_seed_and_schedule_plots(study):
    paths = write_study_report(study)
    assert {study.folder / SEEDS_PNG, study.folder / SCHEDULES_PNG} <= set(paths)
    readme = (study.folder / "README.md").read_text()
    assert f"]({SEEDS_PNG})" in readme and f"]({SCHEDULES_PNG})" in readme
    assert SENSITIVITY_PNG not in readme      # not a compare study: nothing drew it


def test_study_report_links_the_sensitivity_plot_once_a_compare_run_drew_it(study):
    draw_sensitivity(write_protocol(study.folder), study.folder / SENSITIVITY_PNG)
    assert f"]({SENSITIVITY_PNG})" in study_markdown(study, study.folder)


def write_protocol(folder: Path, record: dict | None = None) -> Path:
    path = folder / "protocol.json"
    path.write_text(json.dumps(record or protocol_fixture(), indent=2) + "\n")
    return path


def test_sensitivity_plot_is_written_from_protocol_json_and_byte_identical(tmp_path):
    protocol = write_protocol(tmp_path)
    first, second = draw_twice(tmp_path, lambda p: draw_sensitivity(protocol, p))
    assert first == second and b"matplotlib" not in first


def png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")


def test_sensitivity_plot_has_a_panel_for_lr_and_one_shared_by_blend_and_warmup_fraction(tmp_path):
    full = draw_sensitivity(write_protocol(tmp_path), tmp_path / "full.png")
    record = protocol_fixture()
    record["trials"] = {"adam": record["trials"]["adam"]}      # Adam searches the lr only
    record["selections"] = {"adam": record["selections"]["adam"]}
    lr_only = draw_sensitivity(write_protocol(tmp_path, record), tmp_path / "lr_only.png")
    assert png_width(lr_only) == 440 and png_width(full) == 2 * 440   # 4 inches at 110 dpi per panel


def test_sensitivity_refuses_a_file_that_is_not_a_protocol_record(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m dualadam.compare"):
        draw_sensitivity(tmp_path / "missing.json", tmp_path / "out.png")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"study": STUDY}))
    with pytest.raises(ValueError, match="has no 'trials'"):
        draw_sensitivity(other, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()
