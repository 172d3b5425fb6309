"""The four stages of a tuned comparison: tune, select, confirm, report. Each is resumable: finished runs are
never trained again (``jobs``), told trials never asked again (``search``), and the report is only rewritten
when what it records changed."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import optuna

from dualadam.atomic_files import atomic_write, strict_json
from dualadam.compare.jobs import Job, Stage
from dualadam.compare.search import Tuning
from dualadam.compare.search_space import Parameter, check_fits_run, load_search_space, training_values
from dualadam.compare.settings import Protocol
from dualadam.reporting.protocols import PROTOCOL_FILE
from dualadam.reporting.review_plots import SENSITIVITY_PNG, plot_sensitivity

log = logging.getLogger(__name__)

SAMPLER_CALLS = {"quasi_random": 'optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed)',
                 "tpe": "optuna.samplers.TPESampler(seed=(seed, trial number), n_startup_trials, "
                        "constant_liar=True)"}
MAKE_TABLES = Path(__file__).resolve().parents[2] / "scripts" / "make_tables.py"


@dataclass(frozen=True)
class Launch:
    """What the command line asked for besides the protocol: training overrides shared by every run, and
    ``hydra...`` overrides for the launcher."""

    training: tuple[str, ...]
    hydra: tuple[str, ...]
    config_dir: Path


def stages(protocol: Protocol, launch: Launch) -> tuple[Stage, Stage]:
    """The tuning and confirmation stages. Tuning runs report as ``<study>_tuning`` (``logger.group``, not
    part of a run's identity), so the study's own tables hold the confirmation runs only."""
    tune = Stage(protocol.folder, "tune", launch.config_dir,
                 (*launch.training, *protocol.tune_overrides, f"++logger.group={protocol.study}_tuning"),
                 launch.hydra)
    confirm = Stage(protocol.folder, "confirm", launch.config_dir,
                    (*launch.training, *protocol.confirm_overrides, f"++logger.group={protocol.study}"),
                    launch.hydra)
    return tune, confirm


def total_steps(tune: Stage, confirm: Stage, protocol: Protocol) -> int:
    """Optimizer steps of a tuning run (epochs x steps per epoch; with gradient accumulation, one step per
    window, ``training.recipe``), measured on the data it will load.

    A confirmation run is checked and its data built here too, before any trial trains: a confirmation
    config that fails (e.g. its full test set larger than its train-eval set) must stop the study now, not
    after an hour of tuning."""
    from dualadam.tasks import build_task, validate_config
    from dualadam.training.recipe import Recipe
    from dualadam.training.runtime import resolve_runtime

    first = protocol.optimizers[0]
    for cfg in (confirm.config(Job("confirm-check", first, protocol.confirm_seeds[0])),
                tune.config(Job("tune-length", first, protocol.tune_seed))):
        validate_config(cfg)
        task = build_task(cfg, resolve_runtime(cfg.trainer))
    steps_per_epoch = Recipe.from_config(cfg.trainer).optimizer_steps_per_epoch(len(task.train_loader))
    return steps_per_epoch * int(cfg.trainer.epochs)


def confirmation_jobs(protocol: Protocol, tuning: Tuning) -> dict[str, list[Job]]:
    jobs = {}
    for name in protocol.optimizers:
        values = training_values(tuning.spaces[name], tuning.best(name).params, tuning.total_steps)
        jobs[name] = [Job(f"confirm-{name}-seed{seed}", name, seed, values) for seed in protocol.confirm_seeds]
    return jobs


def _trial_record(tuning: Tuning, name: str, trial: optuna.trial.FrozenTrial) -> dict:
    job = tuning.job(name, trial)
    return {"number": trial.number, "params": trial.params, "overrides": job.values, "state": trial.state.name,
            "score": trial.value, "run_dir": str(tuning.stage.run_dir(job))}


def protocol_record(protocol: Protocol, launch: Launch, tuning: Tuning, confirm: Stage,
                    confirmations: dict[str, list[Job]], summaries: dict[str, dict]) -> dict:
    spaces = {name: {p: param.describe() for p, param in space.items()} for name, space in tuning.spaces.items()}
    trials = {name: [_trial_record(tuning, name, t) for t in tuning.told(name)] for name in protocol.optimizers}
    selections = {name: {k: v for k, v in _trial_record(tuning, name, tuning.best(name)).items() if k != "state"}
                  for name in protocol.optimizers}
    confirmed = {name: [{"seed": job.seed, "run_dir": str(confirm.run_dir(job)),
                         "status": summaries[job.name]["status"], "final": summaries[job.name].get("final")}
                        for job in jobs] for name, jobs in confirmations.items()}
    return {
        "study": protocol.study,
        "protocol": ["tune: K trials per optimizer at the tuning seed, scored by the final-epoch metric",
                     "select: each optimizer's best completed trial",
                     "confirm: the selection rerun at every confirmation seed (shared by all optimizers)",
                     "report: tables of the confirmation runs only"],
        "budget": {"trials_per_optimizer": protocol.trials, "tune_seed": protocol.tune_seed,
                   "confirm_seeds": list(protocol.confirm_seeds), "n": len(protocol.confirm_seeds),
                   "parallel": protocol.parallel},
        "score": {"metric": protocol.metric, "epoch": "final",
                  "direction": "maximize" if protocol.maximize else "minimize"},
        "sampler": {**protocol.sampler, "optuna": SAMPLER_CALLS[protocol.sampler["sampler"]],
                    "optuna_version": optuna.__version__, "storage": str(protocol.folder / "search.db")},
        "overrides": {"training": list(launch.training), "tuning_only": list(protocol.tune_overrides),
                      "confirmation_only": list(protocol.confirm_overrides)},
        "total_steps": tuning.total_steps,
        "search_spaces": spaces,
        "trials": trials,
        "selections": selections,
        "confirmation": confirmed,
    }


def make_tables(protocol: Protocol, confirm: Stage, record_path: Path) -> None:
    """The study's tables from its confirmation runs, by ``scripts/make_tables.py`` itself, labelled with the
    protocol recorded at ``record_path``."""
    spec = importlib.util.spec_from_file_location("make_tables", MAKE_TABLES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    docs = [arg for doc in protocol.docs for arg in ("--doc", doc)] or ["--no-doc"]
    module.main(["--roots", str(confirm.sweep_dir), "--study", protocol.study,
                 "--results", str(protocol.results.parent), "--protocol-json", str(record_path), *docs])


def run_protocol(protocol: Protocol, launch: Launch) -> dict:
    """Tune, select, confirm, report; returns the protocol record (``<results>/<study>/protocol.json``)."""
    tune, confirm = stages(protocol, launch)
    spaces: dict[str, dict[str, Parameter]] = {
        name: load_search_space(launch.config_dir, name, protocol.search_space_changes.get(name))
        for name in protocol.optimizers}
    steps = total_steps(tune, confirm, protocol)
    for name, space in spaces.items():
        check_fits_run(name, space, steps)
    tuning = Tuning(protocol, spaces, steps, tune)
    log.info("tune: %d trials per optimizer, %s sampler, %d steps per run", protocol.trials,
             protocol.sampler["sampler"], tuning.total_steps)
    tuning.run()
    confirmations = confirmation_jobs(protocol, tuning)
    summaries = confirm.run([job for jobs in confirmations.values() for job in jobs])
    record = protocol_record(protocol, launch, tuning, confirm, confirmations, summaries)
    # protocol.json is written last: a launch killed while the tables were written makes them again.
    path, text = protocol.results / PROTOCOL_FILE, strict_json(record, indent=2) + "\n"
    if path.is_file() and path.read_text() == text:
        log.info("report: %s unchanged; tables left as they are", path)
        return record
    plot_sensitivity(record, protocol.results / SENSITIVITY_PNG)   # first: the study README links it
    # The tables name the protocol; they read it from the study's work folder, since the results folder's copy
    # is written only once they are.
    draft = protocol.folder / PROTOCOL_FILE
    atomic_write(draft, lambda f: f.write(text.encode()))
    make_tables(protocol, confirm, draft)
    atomic_write(path, lambda f: f.write(text.encode()))
    return record
