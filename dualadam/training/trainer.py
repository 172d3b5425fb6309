"""The task-agnostic epoch loop: train, evaluate train-eval and test, record one metrics row per epoch.

Everything a resumed run needs is either a torch object with a ``state_dict`` (model, optimizer, scheduler,
grad scaler) or in ``TrainState``; ``Trainer.end_of_epoch`` is where a checkpoint of both belongs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from dualadam.training import metrics as M
from dualadam.training.optimizers import inverse_adam_rate
from dualadam.training.runtime import Runtime
from dualadam.training.tasks import Task


class EpochSink(Protocol):
    """Something that records each epoch's metrics row (the metrics file, W&B)."""

    def log_epoch(self, record: dict[str, float]) -> None: ...


@dataclass(frozen=True)
class TrainingPass:
    """What one epoch's training pass measured."""

    loss: float      # mean per sample
    acc: float       # percent
    lr: float        # of the last optimizer step
    seconds: float
    samples: int


@dataclass
class TrainState:
    """The loop's own progress, beside the torch objects' state_dicts."""

    epochs_completed: int = 0
    last: dict[str, float] | None = None   # the latest epoch's metrics row
    best: dict[str, float] | None = None   # the row of the best epoch by ``trainer.monitor``
    wandb_run_id: str | None = None

    def record(self, row: dict[str, float], monitor: str) -> None:
        self.epochs_completed = int(row[M.EPOCH])
        self.last = row
        if M.is_improvement(monitor, row[monitor], None if self.best is None else self.best[monitor]):
            self.best = row


class Trainer:
    def __init__(self, task: Task, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, runtime: Runtime, *, epochs: int,
                 monitor: str, progress: bool, sinks: Iterable[EpochSink] = ()):
        self.task = task
        self.model = torch.compile(task.model) if runtime.compile else task.model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.runtime = runtime
        self.scaler = runtime.grad_scaler()
        self.epochs = epochs
        self.monitor = monitor
        self.progress = progress
        self.sinks = list(sinks)

    def fit(self, state: TrainState) -> TrainState:
        """Run the remaining epochs, ``state.epochs_completed`` to ``epochs``."""
        bar = tqdm(range(state.epochs_completed, self.epochs), desc="epochs", initial=state.epochs_completed,
                   total=self.epochs, disable=not self.progress, dynamic_ncols=True)
        for epoch in bar:
            row = self.run_epoch(epoch)
            state.record(row, self.monitor)
            for sink in self.sinks:
                sink.log_epoch(row)
            self.end_of_epoch(state)
            bar.set_postfix({"train": f"{row[M.TRAIN_ACC]:.1f}%", "test": f"{row[M.TEST_ACC]:.1f}%"})
        return state

    def end_of_epoch(self, state: TrainState) -> None:
        """Every epoch's row has been recorded: the place for an atomic checkpoint (model, optimizer,
        scheduler, scaler, RNG states, ``state``)."""

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch (``epoch`` is 0-based) and its metrics row, keys as in ``metrics.EPOCH_METRIC_KEYS``."""
        train = self.train_one_epoch(epoch)
        eval_start = time.perf_counter()
        evaluated = {name: self.evaluate(loader) for name, loader in self.task.eval_loaders.items()}
        eval_seconds = time.perf_counter() - eval_start
        train_eval, test = evaluated["train_eval"], evaluated["test"]
        row = {
            M.EPOCH: epoch + 1,
            M.TRAIN_LOSS: train.loss, M.TRAIN_ACC: train.acc,
            M.TRAIN_EVAL_LOSS: train_eval["loss"], M.TRAIN_EVAL_ACC: train_eval["acc"],
            M.TEST_LOSS: test["loss"], M.TEST_ACC: test["acc"],
            **M.generalization_gap(train_eval, test),
            M.LR: train.lr,
            M.INVERSE_ADAM_RATE: inverse_adam_rate(self.optimizer),
            M.OPTIMIZER_STEPS: self.scheduler.last_epoch,
            M.EPOCH_TIME: train.seconds, M.EVAL_TIME: eval_seconds,
            M.THROUGHPUT: train.samples / train.seconds,
        }
        return {key: row[key] for key in M.EPOCH_METRIC_KEYS}

    def train_one_epoch(self, epoch: int) -> TrainingPass:
        """The loop never syncs with the device; ``totals.read()`` at the end is the one sync, so the timing
        covers all queued work."""
        loader = self.task.train_loader
        loader.set_epoch(epoch)
        self.model.train()
        totals = M.RunningTotals(self.runtime.device)
        lr = self.optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        for batch in tqdm(loader, desc=f"epoch {epoch + 1}", total=len(loader), leave=False,
                          disable=not self.progress, dynamic_ncols=True):
            with self.runtime.autocast():
                loss, correct, count = self.task.training_step(self.model, batch)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer_step(loss)
            totals.add(loss, correct, count)
        measured = totals.read()
        return TrainingPass(loss=measured["loss"], acc=measured["acc"], lr=lr,
                            seconds=time.perf_counter() - start, samples=totals.count)

    def optimizer_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        self.model.eval()
        with self.runtime.autocast():
            return self.task.evaluate(self.model, loader)
