"""Tuning with equal budgets: one Optuna study per optimizer in ``<study folder>/search.db``, driven by ask/tell.

Each round asks every optimizer that has not used its budget for its next ``parallel`` trials, trains them as
one batch (``jobs``), and tells each study its trials' final scores. What makes it resumable and reproducible:

- The studies live in SQLite (``load_if_exists``), so a relaunch continues them. A trial asked but never told
  (the process was killed) is still RUNNING there: the relaunch trains it first, with its recorded
  parameters, so its run directory resumes (or, if the run had finished, is only read), and tells it.
- Every ask gets a freshly seeded sampler: QMC with the study's seed (the Sobol index comes from the study's
  trial count), TPE with a seed derived from (seed, trial number). A trial's parameters therefore depend on
  the seed and the told results alone, never on where an earlier launch was stopped.
- A diverged trial is told FAIL: it used its share of the budget and can never be selected.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.samplers import BaseSampler, QMCSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from dualadam.compare.jobs import Job, Stage
from dualadam.compare.search_space import Parameter, training_values
from dualadam.compare.settings import CompareConfigError, Protocol

log = logging.getLogger(__name__)


def make_sampler(search: dict, trial_number: int) -> BaseSampler:
    """The sampler that draws trial ``trial_number`` (see the module docstring)."""
    if search["sampler"] == "quasi_random":
        with warnings.catch_warnings():   # "experimental" since Optuna 3.0; its interface is what we use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return QMCSampler(qmc_type="sobol", scramble=True, seed=search["seed"])
    seed = int(np.random.SeedSequence([search["seed"], trial_number]).generate_state(1)[0])
    return TPESampler(seed=seed, n_startup_trials=search.get("n_startup_trials", 10),
                      constant_liar=True)   # only matters when trials are pending (compare.parallel > 1)


def open_study(protocol: Protocol, storage: optuna.storages.BaseStorage, optimizer: str) -> optuna.Study:
    return optuna.create_study(study_name=optimizer, storage=storage, load_if_exists=True,
                               direction="maximize" if protocol.maximize else "minimize",
                               sampler=make_sampler(protocol.sampler, 0))


@dataclass
class Tuning:
    """The tuning stage of one protocol: its studies, search spaces and the run length they scale by."""

    protocol: Protocol
    spaces: dict[str, dict[str, Parameter]]
    total_steps: int
    stage: Stage

    def __post_init__(self):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.protocol.folder.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.RDBStorage(self.protocol.storage)   # one connection for every study
        self.studies = {name: open_study(self.protocol, storage, name) for name in self.protocol.optimizers}
        for name, study in self.studies.items():
            self._check_same_setup(name, study)

    def setup(self, optimizer: str) -> dict:
        """What a study's scores depend on besides the budget: a relaunch must not mix two setups."""
        return {"sampler": self.protocol.sampler, "metric": self.protocol.metric,
                "tune_seed": self.protocol.tune_seed, "total_steps": self.total_steps,
                "search_space": {name: p.describe() for name, p in self.spaces[optimizer].items()},
                "overrides": list(self.stage.overrides) if self.stage is not None else []}

    def _check_same_setup(self, optimizer: str, study: optuna.Study) -> None:
        ours, theirs = self.setup(optimizer), study.user_attrs.get("setup")
        if theirs is None:
            study.set_user_attr("setup", ours)
        elif theirs != ours:
            differing = sorted(key for key in ours if ours[key] != theirs.get(key))
            raise CompareConfigError(
                f"{self.protocol.folder / 'search.db'} holds a search of {optimizer} with another "
                f"{', '.join(differing)} (there: {[theirs.get(k) for k in differing]}). Relaunch with the "
                "same settings to continue it, or choose a new compare.folder (or compare.study) for a new search")

    def job(self, optimizer: str, trial: FrozenTrial | optuna.Trial) -> Job:
        values = training_values(self.spaces[optimizer], trial.params, self.total_steps)
        return Job(f"tune-{optimizer}-{trial.number:04d}", optimizer, self.protocol.tune_seed, values)

    def _ask(self, optimizer: str) -> optuna.Trial:
        study = self.studies[optimizer]
        study.sampler = make_sampler(self.protocol.sampler, len(study.get_trials(deepcopy=False)))
        distributions = {name: p.distribution for name, p in self.spaces[optimizer].items()}
        return study.ask(distributions)

    def next_trials(self, optimizer: str) -> list[FrozenTrial | optuna.Trial]:
        """Trials killed before they were told, else up to ``parallel`` new ones within the budget."""
        study = self.studies[optimizer]
        trials = study.get_trials(deepcopy=False)
        orphans = [t for t in trials if t.state == TrialState.RUNNING]
        if orphans:
            return orphans
        asked = min(self.protocol.parallel, self.protocol.trials - len(trials))
        return [self._ask(optimizer) for _ in range(max(asked, 0))]

    def score(self, summary: dict) -> float | None:
        """The trial's final ``metric``; None for a diverged run."""
        if summary["status"] != "completed":
            return None
        score = (summary.get("final") or {}).get(self.protocol.metric)
        if score is None:
            raise KeyError(f"{summary['run_dir']}/summary.json has no final {self.protocol.metric!r}: "
                           "compare.metric names a metric this run did not record (a validation metric needs "
                           "dataset.val_size > 0)")
        return float(score)

    def tell(self, optimizer: str, trial, score: float | None) -> None:
        """A score, or FAIL for a diverged trial: it used its share of the budget and is never selected."""
        if score is None:
            self.studies[optimizer].tell(trial.number, state=TrialState.FAIL)
            log.warning("%s trial %d diverged: told FAIL (it counts towards the budget)", optimizer, trial.number)
        else:
            self.studies[optimizer].tell(trial.number, score)

    def run(self) -> None:
        """Rounds until every optimizer has told ``trials`` trials."""
        while True:
            batch = [(name, trial) for name in self.protocol.optimizers for trial in self.next_trials(name)]
            if not batch:
                return
            jobs = {id(trial): self.job(name, trial) for name, trial in batch}
            summaries = self.stage.run(list(jobs.values()))
            for name, trial in batch:
                self.tell(name, trial, self.score(summaries[jobs[id(trial)].name]))

    def told(self, optimizer: str) -> list[FrozenTrial]:
        return [t for t in self.studies[optimizer].get_trials() if t.state.is_finished()]

    def best(self, optimizer: str) -> FrozenTrial:
        """The best completed trial (the earliest among equals)."""
        done = [t for t in self.told(optimizer) if t.state == TrialState.COMPLETE]
        if not done:
            raise RuntimeError(f"No tuning trial of {optimizer} completed (all diverged); widen or lower its "
                               f"search space (configs/search_space/{optimizer}.yaml)")
        sign = -1.0 if self.protocol.maximize else 1.0
        return min(done, key=lambda t: (sign * t.value, t.number))
