"""Faults injected into real runs at a moment a test names, through Hydra's callback hook
(``+hydra.callbacks.fault._target_=tests.fault_injection.SignalAtStep ...``), so the launchers (basic,
submitit) and their requeue paths run unmodified, each in its own processes.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dualadam.training.trainer import Trainer

MARKER = ".fault-injected"


class SignalAtStep(Callback):
    """The job with ``seed`` sends itself ``signal`` (e.g. ``SIGKILL``, ``SIGUSR2``) right after optimizer step
    ``step``, once: a marker file in its run directory spares the attempt that resumes it."""

    def __init__(self, signal: str, step: int, seed: int):
        self.signal, self.step, self.seed = signal, int(step), int(seed)
        self._original = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        marker = Path(config.hydra.runtime.output_dir) / MARKER
        if config.seed != self.seed or marker.exists():
            return
        original, signum, at_step = Trainer.optimizer_step, signal.Signals[self.signal], self.step

        def step_then_signal(trainer: Trainer, loss) -> None:
            original(trainer, loss)
            if trainer.scheduler.last_epoch == at_step:
                marker.touch()
                os.kill(os.getpid(), signum)

        self._original, Trainer.optimizer_step = original, step_then_signal

    def on_job_end(self, config: DictConfig, job_return, **kwargs: Any) -> None:
        if self._original is not None:
            Trainer.optimizer_step, self._original = self._original, None


def fault_overrides(signal_name: str, step: int, seed: int) -> list[str]:
    """The command-line overrides that install ``SignalAtStep`` in a Hydra run or sweep."""
    prefix = "+hydra.callbacks.fault"
    return [f"{prefix}._target_=tests.fault_injection.SignalAtStep", f"{prefix}.signal={signal_name}",
            f"{prefix}.step={step}", f"{prefix}.seed={seed}"]


class StricterValidation(Callback):
    """Every job's config is rejected, as by a newer release whose validation is stricter than the one the
    runs were made with (a ``ConfigError`` naming ``key``), before the job trains."""

    def __init__(self, key: str):
        self.key = key
        self._original = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from dualadam.training import run
        from dualadam.training.validation import ConfigError

        key = self.key

        def reject(cfg: DictConfig, task=None) -> None:
            raise ConfigError(f"{key}: rejected by a stricter validation")

        self._original, run.validate_config = run.validate_config, reject

    def on_job_end(self, config: DictConfig, job_return, **kwargs: Any) -> None:
        if self._original is not None:
            from dualadam.training import run

            run.validate_config, self._original = self._original, None


def stricter_validation_overrides(key: str) -> list[str]:
    """The command-line overrides that install ``StricterValidation`` in a Hydra run or sweep."""
    prefix = "+hydra.callbacks.strict"
    return [f"{prefix}._target_=tests.fault_injection.StricterValidation", f"{prefix}.key={key}"]
