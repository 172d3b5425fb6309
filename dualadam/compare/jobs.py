"""Trials and confirmation runs as ordinary training runs of ``dualadam.train``.

A job is a small config file, ``<study folder>/jobs/compare_job/<name>.yaml`` (``# @package _global_``: the
optimizer choice, the seed and the searched values), added with ``+compare_job=<name>`` over the study's own
overrides. A batch of jobs is one Hydra multirun of ``dualadam.train``'s entrypoint in this process
(``+compare_job=a,b,c``), so the launcher is Hydra's: the basic one runs the jobs here one after another,
``hydra/launcher=joblib|submitit_local|slurm`` run them elsewhere. Each job trains in ``<stage dir>/<run_name>``,
a function of its config (``run_directory``), so a relaunch skips its finished jobs and resumes killed ones.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from dualadam.atomic_files import atomic_write
from dualadam.training.run_directory import FINISHED, read_summary, register_resolvers, run_name

JOB_GROUP = "compare_job"


class JobFailed(RuntimeError):
    """A job ended neither completed nor diverged; its run directory says why. A relaunch retries it."""


@dataclass(frozen=True)
class Job:
    name: str                     # the job file's name, unique in the study
    optimizer: str                # the optimizer group choice
    seed: int
    values: dict[str, float] = field(default_factory=dict)   # training key -> value

    def file_text(self) -> str:
        body = OmegaConf.create({"seed": self.seed})
        for key, value in sorted(self.values.items()):
            OmegaConf.update(body, key, value, force_add=True)
        return ("# @package _global_\n# Written by python -m dualadam.compare; one trial or confirmation run.\n"
                f"defaults:\n  - override /optimizer: {self.optimizer}\n{OmegaConf.to_yaml(body)}")


@dataclass(frozen=True)
class Stage:
    """Where a stage's jobs train and what they share: ``overrides`` (training keys, for every job of the
    stage) and ``launch`` (``hydra...`` overrides: the launcher and its settings)."""

    folder: Path                  # the study folder
    name: str                     # tune | confirm
    config_dir: Path
    overrides: tuple[str, ...]
    launch: tuple[str, ...] = ()
    _run_dirs: dict = field(default_factory=dict, compare=False, repr=False)   # (name, file text) -> run dir

    @property
    def sweep_dir(self) -> Path:
        return (self.folder / self.name).resolve()

    @property
    def jobs_dir(self) -> Path:
        return (self.folder / "jobs").resolve()

    def job_overrides(self, job_name: str) -> list[str]:
        return [*self.overrides, f"hydra.searchpath=[file://{self.jobs_dir}]", f"+{JOB_GROUP}={job_name}"]

    def write(self, job: Job) -> None:
        path = self.jobs_dir / JOB_GROUP / f"{job.name}.yaml"
        text = job.file_text()
        if not path.is_file() or path.read_text() != text:
            atomic_write(path, lambda f: f.write(text.encode()))

    def config(self, job: Job) -> DictConfig:
        """The job's training config, composed as the entrypoint will compose it."""
        self.write(job)
        register_resolvers()
        with initialize_config_dir(config_dir=str(self.config_dir), version_base="1.3"):
            return compose(config_name="train", overrides=self.job_overrides(job.name))

    def run_dir(self, job: Job) -> Path:
        key = (job.name, job.file_text())
        if key not in self._run_dirs:   # composing takes about half a second
            self._run_dirs[key] = self.sweep_dir / run_name(self.config(job))
        return self._run_dirs[key]

    def finished(self, job: Job) -> dict | None:
        summary = read_summary(self.run_dir(job))
        return summary if summary is not None and summary.get("status") in FINISHED else None

    def run(self, jobs: list[Job]) -> dict[str, dict]:
        """Train the unfinished ``jobs`` as one multirun; every job's final summary, by job name."""
        todo = [job for job in jobs if self.finished(job) is None]
        if todo:
            logging.getLogger(__name__).info("%s: launching %d of %d jobs", self.name, len(todo), len(jobs))
            common = self.job_overrides(",".join(job.name for job in todo))
            launch_multirun([*common, f"hydra.sweep.dir={self.sweep_dir}", "hydra.sweeper.params=null",
                             *self.launch])
        summaries = {}
        for job in jobs:
            summary = self.finished(job)
            if summary is None:
                run_dir = self.run_dir(job)
                status = (read_summary(run_dir) or {}).get("status", "not started")
                raise JobFailed(f"{self.name} job {job.name} ended {status!r}; see {run_dir}/error.txt and "
                                f"train.log. Relaunch the same command to retry it (finished jobs are kept)")
            summaries[job.name] = summary
        return summaries


@contextmanager
def _kept_logging():
    """Hydra's job logging points the root logger at the last job's file; give the caller its own back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


def launch_multirun(overrides: list[str]) -> None:
    """``python -m dualadam.train -m <overrides>``, run by Hydra in this process."""
    from dualadam import train as entrypoint

    argv = sys.argv
    sys.argv = [entrypoint.__file__, "-m", *overrides]
    try:
        with _kept_logging():
            entrypoint.main()
    except SystemExit as stop:  # Hydra reports a bad override or config, then exits
        if stop.code:
            raise JobFailed(f"Hydra could not launch the jobs (exit {stop.code}): see the message above. "
                            f"Overrides: {overrides}") from None
    finally:
        sys.argv = argv
