"""The training entrypoint: ``python -m dualadam.train [overrides]`` or ``dualadam-train [overrides]``.

``train(cfg)`` runs one training run: the core's ``dualadam.training.run.train`` with the task ``cfg.task``
names (from the registry ``dualadam.tasks``; the core imports no task). Tests and ``dualadam.compare`` call it;
``main`` is the Hydra wrapper over it. See docs/training.md (the configs and the defaults) and docs/runs.md
(the run directories, resume, sweeps).

- A single run that fails exits non-zero. In a multirun (``-m``), a failed job is recorded in its directory
  (``summary.json`` with ``status: failed``, ``error.txt``) and the sweep goes on with the next one.
- The config is validated before the training machinery (timm's models, torchvision, the LLM stack, W&B) is
  imported, so ``--help`` and a bad config answer in seconds.
- After a preemption signal the run saves a checkpoint and its files, then the signal is passed on to the
  handler the process had before (``preemption.redeliver``): submitit's requeues the job, the default one ends
  the process as the signal meant to.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dualadam.training.preemption import redeliver
from dualadam.training.run_directory import register_resolvers
from dualadam.training.validation import ConfigError

CONFIG_DIR_VARIABLE = "DUALADAM_CONFIG_DIR"


def find_config_dir() -> str:
    """The ``configs/`` folder, as an absolute path (Hydra resolves a relative one against a Python package
    when started as a console script): ``$DUALADAM_CONFIG_DIR``, else the checkout's (an editable install or
    a source tree), else ``./configs`` (a regular ``pip install`` run from a checkout or a copy of it)."""
    if os.environ.get(CONFIG_DIR_VARIABLE):
        candidates = [Path(os.environ[CONFIG_DIR_VARIABLE])]
    else:
        candidates = [Path(__file__).resolve().parents[1] / "configs", Path.cwd() / "configs"]
    for folder in candidates:
        if (folder / "train.yaml").is_file():
            return str(folder.resolve())
    raise SystemExit(f"No training configs (train.yaml) in {' or '.join(map(str, candidates))}. configs/ is a "
                     f"folder of the repository, not of the installed package: run from a checkout, or set "
                     f"{CONFIG_DIR_VARIABLE}=<checkout>/configs")


CONFIG_DIR = find_config_dir()

log = logging.getLogger(__name__)
register_resolvers()  # ${run_name:} in hydra.run.dir / hydra.sweep.subdir; also in submitit's job processes


def train(cfg: DictConfig) -> dict:
    """Train as ``cfg`` says; the summary that ``<run_dir>/summary.json`` holds (``dualadam.training.run``)."""
    from dualadam.tasks import task_definition
    from dualadam.training import run  # the heavy imports, once asked to train

    return run.train(cfg, task_definition(cfg))


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        from dualadam.tasks import validate_config

        validate_config(cfg)
        summary = train(cfg)  # the heavy imports, once the config is known to be good
    except Exception as error:
        if not _in_multirun():
            if isinstance(error, ConfigError):  # the message says it all; a traceback would bury it
                raise SystemExit(f"Config error: {error}") from None
            raise
        if isinstance(error, ConfigError):
            from dualadam.training.run import record_failed_start

            record_failed_start(cfg)
        log.exception("This sweep job failed; the sweep continues. Its directory: %s", cfg.run_dir)
        return None
    preempted = summary.get("preempted") or {}
    if summary["status"] == "preempted" and preempted.get("signal"):
        redeliver(signal.Signals[preempted["signal"]])
    best = summary.get("best") or {}
    return best.get(cfg.trainer.monitor)  # what a Hydra sweeper optimizes


if __name__ == "__main__":
    main()
