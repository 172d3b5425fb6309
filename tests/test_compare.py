"""The tuned-comparison protocol (``python -m dualadam.compare``): the search is a function of its seed and
survives a kill, and the whole protocol (tune, select, confirm, report) runs on synthetic data, then a relaunch
does no work at all."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dualadam.compare.__main__ import main as compare_main
from dualadam.compare.__main__ import prepare
from dualadam.compare.search import Tuning
from dualadam.compare.search_space import load_search_space
from dualadam.compare.settings import CompareConfigError
from dualadam.reporting.results_csv import RUNS_FILE
from dualadam.training.run_directory import CHECKPOINT_FILE
from dualadam.training.trainer import Trainer
from tests.conftest import CONFIG_DIR, FAST_OVERRIDES, REPO
from tests.runs import child_env, one_thread, read_summary  # noqa: F401  (one_thread: fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

# 160 synthetic images, 32 held out for validation, the rest in batches of 32 for 2 epochs: 8 optimizer steps
# per run, about a second each.
TINY_RUN = (*FAST_OVERRIDES, "trainer.epochs=2", "dataset=synthetic", "dataset.train_size=160",
            "dataset.test_size=64", "+dataset.val_size=32", "trainer.monitor=val/acc")
SCORE = "compare.metric=val/acc"  # the protocol's default, spelled out


def protocol_args(root: Path, *extra: str, optimizers: str = "[adam,dualadam]") -> list[str]:
    """A tiny protocol in ``root``: 2 trials per optimizer, 5 confirmation seeds. The blend must last at least
    one of the run's 8 steps, so its fraction starts at 1/8."""
    return [*TINY_RUN, "compare.study=tiny", f"compare.folder={root / 'compare'}",
            f"compare.results={root / 'results'}", SCORE, f"compare.optimizers={optimizers}", "compare.trials=2",
            *(["++compare.search_spaces.dualadam.blend_fraction.low=0.125"] if "dualadam" in optimizers else []),
            *extra]


# ---------------------------------------------------------------- the search, without training


def toy_score(params: dict) -> float:
    """A smooth function of the parameters, standing in for a run's validation accuracy."""
    return 90.0 - sum((math.log10(value) + 2.0) ** 2 for value in params.values())


def search(root: Path, *overrides: str, tell_before_kill: int | None = None) -> Tuning:
    """Drive the tuning stage's ask/tell loop with ``toy_score``; ``tell_before_kill`` stops it (as a kill
    would) after that many results, leaving the asked trials of the round untold."""
    protocol, launch = prepare([*protocol_args(root, optimizers="[adam,dualadam]"), "compare.trials=5", *overrides],
                               CONFIG_DIR)
    spaces = {name: load_search_space(CONFIG_DIR, name, protocol.search_space_changes.get(name))
              for name in protocol.optimizers}
    tuning = Tuning(protocol, spaces, total_steps=100, stage=None)
    told = 0
    while batch := [(name, trial) for name in protocol.optimizers for trial in tuning.next_trials(name)]:
        for name, trial in batch:
            if told == tell_before_kill:
                return tuning
            tuning.tell(name, trial, toy_score(trial.params))
            told += 1
    return tuning


def study_contents(tuning: Tuning) -> dict[str, list[tuple]]:
    return {name: [(t.number, t.state.name, t.params, t.value) for t in study.get_trials()]
            for name, study in tuning.studies.items()}


@pytest.mark.parametrize("sampler", ["quasi_random", "tpe"])
def test_search_draws_the_same_trials_from_the_same_seed_and_others_from_another(tmp_path, sampler):
    first = study_contents(search(tmp_path / "a", f"hparams_search={sampler}"))
    again = study_contents(search(tmp_path / "b", f"hparams_search={sampler}"))
    other = study_contents(search(tmp_path / "c", f"hparams_search={sampler}", "hparams_search.seed=1"))
    assert first == again
    assert all(len(trials) == 5 and all(t[1] == "COMPLETE" for t in trials) for trials in first.values())
    assert first["dualadam"][-1][2] != other["dualadam"][-1][2]
    assert set(first["dualadam"][0][2]) == {"lr", "weight_decay", "blend_fraction"}   # its declared space
    assert set(first["adam"][0][2]) == {"lr"}


@pytest.mark.parametrize("sampler", ["quasi_random", "tpe"])
def test_search_stopped_between_ask_and_tell_continues_to_the_same_study(tmp_path, sampler):
    stopped = search(tmp_path / "s", f"hparams_search={sampler}", tell_before_kill=5)
    running = [t.number for t in stopped.studies["dualadam"].get_trials() if t.state.name == "RUNNING"]
    assert running == [2]   # asked in round 3, never told
    resumed = search(tmp_path / "s", f"hparams_search={sampler}")
    assert study_contents(resumed) == study_contents(search(tmp_path / "u", f"hparams_search={sampler}"))


def test_a_relaunch_with_another_search_space_or_sampler_is_refused(tmp_path):
    search(tmp_path, "hparams_search=quasi_random", tell_before_kill=3)
    with pytest.raises(CompareConfigError, match="another search_space"):
        search(tmp_path, "++compare.search_spaces.adam.lr.high=0.1")
    with pytest.raises(CompareConfigError, match="another sampler"):
        search(tmp_path, "hparams_search=tpe")


@pytest.mark.parametrize(("override", "key"), [
    ("compare.confirm_seeds=[1,2,3,4]", "compare.confirm_seeds"),
    ("compare.confirm_seeds=[0,1,2,3,4]", "compare.confirm_seeds"),   # the tuning seed
    ("compare.trials=0", "compare.trials"),
    ("compare.optimizers=[adam,lion]", "compare.optimizers"),        # no search space for lion
    ("compare.metric=test/accuracy", "compare.metric"),
    ("hparams_search.sampler=grid", "hparams_search.sampler"),
])
def test_bad_protocol_settings_fail_naming_the_key_before_any_work(tmp_path, override, key):
    with pytest.raises(CompareConfigError, match=key.replace(".", r"\.")):
        prepare([*protocol_args(tmp_path), override], CONFIG_DIR)
    assert not (tmp_path / "compare").exists()


def test_a_blend_shorter_than_one_step_fails_before_any_training(tmp_path):
    args = protocol_args(tmp_path, "++compare.search_spaces.dualadam.blend_fraction.low=0.01")
    with pytest.raises(CompareConfigError, match=r"blend_fraction.*under one step"):
        compare_main(args)
    assert not (tmp_path / "compare" / "tiny" / "tune").exists()


def test_a_confirmation_run_that_cannot_start_stops_the_study_before_any_tuning(tmp_path):
    """The confirmation runs differ from the trials by ``compare.confirm_overrides``; a confirmation config that
    its data cannot serve (a train-eval set smaller than the test set) must fail before the first trial."""
    args = protocol_args(tmp_path, "compare.confirm_overrides=['++dataset.train_eval_size=16']")
    with pytest.raises(ValueError, match=r"train_eval_size=16 is smaller than the test set"):
        compare_main(args)
    assert not (tmp_path / "compare" / "tiny" / "tune").exists()


# ---------------------------------------------------------------- the whole protocol


def run_files(folder: Path) -> dict[str, int]:
    """mtime of every file under ``folder`` a run or a table wrote: unchanged means not trained again."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_compare_tunes_selects_confirms_and_reports_then_a_relaunch_does_nothing(tmp_path, isolated_wandb):
    record = compare_main(protocol_args(tmp_path))
    study, results = tmp_path / "compare" / "tiny", tmp_path / "results" / "tiny"

    for name in ("adam", "dualadam"):
        trials = record["trials"][name]
        assert [t["number"] for t in trials] == [0, 1] and all(t["state"] == "COMPLETE" for t in trials)
        for trial in trials:   # each trial is an ordinary run; its score is the run's final metric
            summary = read_summary(trial["run_dir"])
            assert summary["status"] == "completed" and trial["score"] == summary["final"]["val/acc"]
            assert Path(trial["run_dir"]).parent == study / "tune"
        best = max(trials, key=lambda t: (t["score"], -t["number"]))
        assert record["selections"][name]["number"] == best["number"]
        confirmed = record["confirmation"][name]
        assert [c["seed"] for c in confirmed] == [1, 2, 3, 4, 5]
        for run in confirmed:   # the selected configuration, at a fresh seed
            config = OmegaConf.load(Path(run["run_dir"]) / ".hydra" / "config.yaml")
            assert config.seed == run["seed"] and config.optimizer.name == name
            for key, value in best["overrides"].items():
                assert OmegaConf.select(config, key) == value
    assert math.isclose(record["trials"]["dualadam"][0]["overrides"]["switch_rate"],
                        1 / (record["trials"]["dualadam"][0]["params"]["blend_fraction"] * 8))
    assert record["budget"]["trials_per_optimizer"] == 2 and record["budget"]["n"] == 5
    assert record["sampler"]["sampler"] == "quasi_random" and "QMCSampler" in record["sampler"]["optuna"]
    assert json.loads((results / "protocol.json").read_text()) == record
    with open(results / RUNS_FILE) as f:   # the study's tables hold the 10 confirmation runs only
        rows = list(csv.DictReader(f))
    assert sorted((r["optimizer"], int(r["seed"])) for r in rows) == [
        (name, seed) for name in ("adam", "dualadam") for seed in (1, 2, 3, 4, 5)]
    table = (results / "table.md").read_text()   # labelled as tuned, and with the steps to the val target
    assert "**Protocol: tuned: 2 trials/optimizer on a validation split (val/acc), 5 confirming seeds.**" in table
    assert "**Steps to reach the target** `val/acc`" in table
    assert "](sensitivity.png)" in (results / "README.md").read_text()   # drawn from the trials, then linked
    assert (results / "sensitivity.png").read_bytes().startswith(b"\x89PNG")

    before = {**run_files(study), **run_files(results)}
    assert compare_main(protocol_args(tmp_path)) == record
    assert {**run_files(study), **run_files(results)} == before


class SignalInJob(Callback):
    """Sends ``signal`` to the process at optimizer step ``step`` of the ``job``-th job that starts in the
    sweep folder (counted across launches in a file there), so it fires once."""

    def __init__(self, signal: str, job: int, step: int):
        self.signal, self.job, self.step = signal, int(job), int(step)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        counter = Path(config.hydra.sweep.dir) / ".jobs-started"
        started = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(started))
        if started != self.job:
            return
        original, signum, at_step = Trainer.optimizer_step, signal.Signals[self.signal], self.step

        def step_then_signal(trainer: Trainer, loss) -> None:
            original(trainer, loss)
            if trainer.scheduler.last_epoch == at_step:
                os.kill(os.getpid(), signum)

        Trainer.optimizer_step = step_then_signal


def search_outcome(record: dict) -> dict:
    """What the search found and chose, without the folders it used."""
    def drop_run_dir(trial: dict) -> dict:
        return {k: v for k, v in trial.items() if k != "run_dir"}

    return {name: ([drop_run_dir(t) for t in trials], drop_run_dir(record["selections"][name]))
            for name, trials in record["trials"].items()}


@pytest.mark.slow
def test_compare_killed_mid_trial_resumes_it_and_reruns_no_finished_trial(tmp_path, isolated_wandb):
    """SIGKILL at step 5 of the third tuning job (adam's trial 1; both trials 0 are told, dualadam's trial 1
    is asked): the relaunch resumes adam's run from its checkpoint, trains dualadam's, leaves the finished
    ones untouched, and ends with the same study and protocol record as an uninterrupted run."""
    killed = tmp_path / "killed"
    fault = ["+hydra.callbacks.kill._target_=tests.test_compare.SignalInJob", "+hydra.callbacks.kill.signal=SIGKILL",
             "+hydra.callbacks.kill.job=3", "+hydra.callbacks.kill.step=5"]
    result = subprocess.run([sys.executable, "-m", "dualadam.compare", *protocol_args(killed), *fault], cwd=REPO,
                            env=child_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    tune = killed / "compare" / "tiny" / "tune"
    finished = {p.parent.name: p.stat().st_mtime_ns for p in tune.glob("*/summary.json")
                if read_summary(p.parent)["status"] == "completed"}
    assert len(finished) == 2

    record = compare_main(protocol_args(killed))
    assert {name: (tune / name / "summary.json").stat().st_mtime_ns for name in finished} == finished
    adam_1 = Path(record["trials"]["adam"][1]["run_dir"])
    assert "Resuming from the end of epoch 1" in (adam_1 / "train.log").read_text()
    assert (adam_1 / CHECKPOINT_FILE).is_file()
    reference = compare_main(protocol_args(tmp_path / "uninterrupted"))
    assert search_outcome(record) == search_outcome(reference)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [
    ("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"),   # the SLURM launcher's local twin
    ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),                # cpu_cifar10_tuned's: 2 side by side
], ids=["submitit_local", "joblib"])
def test_compare_runs_its_batches_through_a_hydra_launcher(tmp_path, isolated_wandb, launcher):
    record = compare_main(protocol_args(tmp_path, "compare.trials=1", *launcher, optimizers="[adam]"))
    runs = [record["trials"]["adam"][0]["run_dir"], *(c["run_dir"] for c in record["confirmation"]["adam"])]
    summaries = [read_summary(run) for run in runs]
    assert all(s["status"] == "completed" for s in summaries)
    assert os.getpid() not in {s["pid"] for s in summaries}   # trained in the launcher's processes
    assert (tmp_path / "results" / "tiny" / RUNS_FILE).is_file()
