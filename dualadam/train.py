"""The training entrypoint: ``python -m dualadam.train [overrides]`` or ``dualadam-train [overrides]``.

A thin Hydra wrapper over ``dualadam.training.run.train``; tests call that function directly. See the README's
"Training" and "Runs that survive and scale" sections for the configs, the defaults and the run directories.

- A single run that fails exits non-zero. In a multirun (``-m``), a failed job is recorded in its directory
  (``summary.json`` with ``status: failed``, ``error.txt``) and the sweep goes on with the next one.
- After a preemption signal the run saves a checkpoint and its files, then the signal is passed on to the
  handler the process had before (``preemption.redeliver``): submitit's requeues the job, the default one ends
  the process as the signal meant to.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dualadam.training.preemption import redeliver
from dualadam.training.run import record_failed_start, train
from dualadam.training.run_directory import register_resolvers
from dualadam.training.validation import ConfigError

# An absolute path: Hydra resolves a relative one against a Python package when started as a console script,
# and configs/ is a folder of the checkout, not a package.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")

log = logging.getLogger(__name__)
register_resolvers()  # ${run_name:} in hydra.run.dir / hydra.sweep.subdir; also in submitit's job processes


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        summary = train(cfg)
    except Exception as error:
        if not _in_multirun():
            raise
        if isinstance(error, ConfigError):
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
