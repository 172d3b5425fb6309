"""The task-agnostic epoch loop: train, evaluate train-eval and test, record one metrics row per epoch.

Everything a resumed run needs is either a torch object with a ``state_dict`` (model, optimizer, scheduler,
grad scaler) or in ``TrainState``; ``Trainer.end_of_epoch`` hands both to the checkpointer
(``dualadam.training.resume``). A ``TrainingGuard`` stops the loop on a non-finite loss or parameter
(``Diverged``, nothing saved) or a preemption signal (``Preempted``, after a checkpoint at that very step; a
signal during an evaluation stops it and checkpoints the end of the epoch's training, so the resumed run
evaluates again). With several processes the model is trained through ``DistributedDataParallel``
(``dualadam.training.distributed``). Each epoch's row is logged as one line (``describe_row``). Gradient
accumulation and clipping (``Recipe``) are applied here, alike for every task and optimizer
(``dualadam.training.recipe`` says how).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from tqdm.auto import tqdm

from dualadam.training import metrics as M
from dualadam.training.checkpoint import restore_rng_states, rng_states
from dualadam.training.distributed import reduce_totals, wrap_model
from dualadam.training.guard import Diverged, EvaluationStopped, TrainingGuard
from dualadam.training.optimizers import inverse_adam_rate
from dualadam.training.preemption import Preempted
from dualadam.training.progress_log import describe_row
from dualadam.training.recipe import GradNormTotals, Recipe, Window
from dualadam.training.runtime import Runtime
from dualadam.training.task import Task

log = logging.getLogger(__name__)


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
    finished: EpochProgress | None = None  # the epoch after its last batch: a checkpoint if evaluation stops
    grad_norm: float | None = None  # mean global gradient norm before clipping (only with trainer.grad_clip_norm)


class CheckpointSink(Protocol):
    """Something that saves the trainer's state (``resume.Checkpointer``); a collective with several ranks."""

    def save(self, trainer: Trainer, state: TrainState) -> None: ...


@dataclass
class EpochProgress:
    """How far into epoch ``epoch`` (0-based) training got when it stopped mid-epoch. A stop comes only at
    the end of an accumulation window (``recipe``), so ``batches`` never splits one."""

    epoch: int
    batches: int               # batches trained in this epoch: the index of the next one
    totals: M.RunningTotals    # their loss and accuracy sums (this rank's)
    lr: float                  # the lr of the last step taken
    seconds: float             # training time they took
    grad_norms: GradNormTotals | None = None  # their steps' gradient norms (with trainer.grad_clip_norm)

    def position(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches, "lr": self.lr, "seconds": self.seconds}

    def totals_state(self) -> dict:
        norms = {} if self.grad_norms is None else self.grad_norms.state()
        return {"loss_sum": self.totals.loss_sum.cpu(), "correct": self.totals.correct.cpu(),
                "count": self.totals.count, **norms}

    @classmethod
    def restore(cls, position: dict, totals: dict, device: torch.device) -> EpochProgress:
        restored = M.RunningTotals(device)
        restored.loss_sum = totals["loss_sum"].to(device)
        restored.correct = totals["correct"].to(device)
        restored.count = int(totals["count"])
        return cls(totals=restored, grad_norms=GradNormTotals.restore(totals, device), **position)


def epoch_batches(loader, epoch: int, start_batch: int, steps: int) -> Iterator:
    """Batches ``start_batch, ..., steps - 1`` of ``epoch``, exactly as an uninterrupted epoch yields them.

    A loader whose ``set_epoch`` takes ``start_batch`` (the in-memory loader) starts there itself; any other
    has the skipped batches drawn and dropped, which costs their loading time but no randomness (the order
    and augmentation are pure functions of (seed, epoch)).
    """
    if start_batch >= steps:  # stopped after the epoch's training, during its evaluation
        return iter(())
    if start_batch and "start_batch" in inspect.signature(loader.set_epoch).parameters:
        loader.set_epoch(epoch, start_batch=start_batch)
        return itertools.islice(iter(loader), steps - start_batch)
    loader.set_epoch(epoch)
    return itertools.islice(iter(loader), start_batch, steps)


def keyed_by_split(evaluated: dict[str, dict[str, float]], leave_out: tuple[str, ...] = ()) -> dict[str, float]:
    """``{"test": {"acc": 50.0}}`` -> ``{"test/acc": 50.0}``: evaluation results under the metric names."""
    return {f"{split}/{key}": value for split, result in evaluated.items()
            for key, value in result.items() if key not in leave_out}


@dataclass
class TrainState:
    """The loop's own progress, beside the torch objects' state_dicts."""

    epochs_completed: int = 0
    last: dict[str, float] | None = None   # the latest epoch's metrics row
    best: dict[str, float] | None = None   # the row of the best epoch by ``trainer.monitor``
    wandb_run_id: str | None = None
    final_measurements: dict[str, float] = field(default_factory=dict)  # e.g. sharpness, after the last epoch
    initial: dict[str, float] | None = None  # the evaluation before any training, if asked for (e.g. "test/acc")
    in_epoch: EpochProgress | None = None  # set when stopped mid-epoch (epoch ``epochs_completed``)

    def record(self, row: dict[str, float], monitor: str) -> None:
        self.epochs_completed = int(row[M.EPOCH])
        self.last = row
        self.in_epoch = None
        if M.is_improvement(monitor, row[monitor], None if self.best is None else self.best[monitor]):
            self.best = row


class Trainer:
    """``steps_per_epoch``: None means ``len(task.train_loader)``; with several ranks, the number all agreed on.
    ``guard``: None watches for divergence only (no preemption), reading the flag every 50 steps.
    ``checkpointer``: None saves nothing. ``recipe``: gradient accumulation and clipping (``recipe``); the
    scheduler must count ``recipe.optimizer_steps_per_epoch(steps_per_epoch)`` steps per epoch."""

    def __init__(self, task: Task, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, runtime: Runtime, *, epochs: int,
                 monitor: str, progress: bool, sinks: Iterable[EpochSink] = (), guard: TrainingGuard | None = None,
                 checkpointer: CheckpointSink | None = None, steps_per_epoch: int | None = None,
                 sync_batchnorm: bool = True, recipe: Recipe | None = None):
        self.task = task
        self.recipe = recipe or Recipe()
        train_model = wrap_model(task.model, runtime, sync_batchnorm=sync_batchnorm)
        self.ddp_model = train_model if train_model is not task.model else None
        self.model = torch.compile(train_model) if runtime.compile else train_model
        # Every rank evaluates the full sets itself, without DDP's collectives.
        self.eval_model = self.model if train_model is task.model else (
            torch.compile(task.model) if runtime.compile else task.model)
        self.guard = guard or TrainingGuard(runtime, check_every=50)
        self.checkpointer = checkpointer
        self.steps_per_epoch = steps_per_epoch or len(task.train_loader)
        self.state = TrainState()
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.runtime = runtime
        self.scaler = runtime.grad_scaler()
        self.grad_norms: GradNormTotals | None = None  # the current epoch's (with gradient clipping)
        self.epochs = epochs
        self.monitor = monitor
        self.progress = progress
        self.sinks = list(sinks)

    def fit(self, state: TrainState) -> TrainState:
        """Run the remaining epochs, ``state.epochs_completed`` to ``epochs`` (from mid-epoch if
        ``state.in_epoch`` is set). Raises ``Diverged`` or ``Preempted`` when the guard stops training."""
        self.state = state
        bar = tqdm(range(state.epochs_completed, self.epochs), desc="epochs", initial=state.epochs_completed,
                   total=self.epochs, disable=not self.progress, dynamic_ncols=True)
        for epoch in bar:
            row = self.run_epoch(epoch, state.in_epoch)
            self.guard.check_evaluation(row, self.task.model, self.scheduler.last_epoch)
            state.record(row, self.monitor)
            log.info(describe_row(row, self.epochs))
            for sink in self.sinks:
                sink.log_epoch(row)
            self.end_of_epoch(state)
            if self.guard.poll(self.scheduler.last_epoch, force=True) == "preempted":  # arrived in evaluation
                raise Preempted(self.guard.signal, self.scheduler.last_epoch)
            bar.set_postfix({"train": f"{row[M.TRAIN_ACC]:.1f}%", "test": f"{row[M.TEST_ACC]:.1f}%"})
        return state

    def end_of_epoch(self, state: TrainState) -> None:
        """Every epoch's row has been recorded, and the guard found no divergence: checkpoint."""
        self.save_checkpoint(state)

    def save_checkpoint(self, state: TrainState) -> None:
        if self.checkpointer is not None:
            self.checkpointer.save(self, state)

    def run_epoch(self, epoch: int, progress: EpochProgress | None = None) -> dict[str, float]:
        """One epoch (``epoch`` is 0-based) and its metrics row, keys as in ``metrics.EPOCH_METRIC_KEYS``."""
        train = self.train_one_epoch(epoch, progress)
        eval_start, trained_rng = time.perf_counter(), rng_states()
        try:
            evaluated = self.evaluate_splits()
        except EvaluationStopped:
            restore_rng_states(trained_rng)  # as it was after training: the resumed run evaluates from there
            self.stop("preempted", train.finished)
        eval_seconds = time.perf_counter() - eval_start
        train_eval, test = evaluated["train_eval"], evaluated["test"]
        row = {
            M.EPOCH: epoch + 1,
            M.TRAIN_LOSS: train.loss, M.TRAIN_ACC: train.acc,
            M.TRAIN_EVAL_LOSS: train_eval["loss"], M.TRAIN_EVAL_ACC: train_eval["acc"],
            M.TEST_LOSS: test["loss"], M.TEST_ACC: test["acc"],
            **M.generalization_gap(train_eval, test),
            **({M.VAL_LOSS: evaluated["val"]["loss"], M.VAL_ACC: evaluated["val"]["acc"]}
               if "val" in evaluated else {}),   # only with a validation split: no NaN columns without one
            M.LR: train.lr,
            M.INVERSE_ADAM_RATE: inverse_adam_rate(self.optimizer),
            M.OPTIMIZER_STEPS: self.scheduler.last_epoch,
            M.EPOCH_TIME: train.seconds, M.EVAL_TIME: eval_seconds,
            M.THROUGHPUT: train.samples / train.seconds,
        }
        # Task-specific extras (e.g. the LLM task's test/perplexity) follow the contract's keys.
        extras = keyed_by_split(evaluated, leave_out=("loss", "acc"))
        if train.grad_norm is not None:
            extras[M.GRAD_NORM] = train.grad_norm
        return {**{key: row[key] for key in M.epoch_metric_keys("val" in evaluated)}, **extras}

    def train_one_epoch(self, epoch: int, progress: EpochProgress | None = None) -> TrainingPass:
        """The loop syncs with the device only when the guard reads its divergence flag (every
        ``check_every`` optimizer steps); ``totals.read()`` at the end is the epoch's sync, so the timing covers
        all queued work. ``progress`` continues an epoch that stopped after ``progress.batches`` batches.

        The guard is asked whether to stop only after an optimizer step: a preemption signal that arrives
        within an accumulation window lets the window finish (at most ``grad_accum_steps - 1`` more
        micro-batches), so a checkpoint never holds half-accumulated gradients."""
        progress = progress or self.epoch_start(epoch)
        assert progress.epoch == epoch, (progress.epoch, epoch)
        if self.recipe.grad_clip_norm is not None and progress.grad_norms is None:
            progress.grad_norms = GradNormTotals(self.runtime.device)
        self.grad_norms = progress.grad_norms
        batches = epoch_batches(self.task.train_loader, epoch, progress.batches, self.steps_per_epoch)
        self.model.train()
        totals, lr, index = progress.totals, progress.lr, progress.batches  # index: batches done
        start = time.perf_counter() - progress.seconds
        bar = tqdm(batches, desc=f"epoch {epoch + 1}", initial=progress.batches, total=self.steps_per_epoch,
                   leave=False, disable=not self.progress, dynamic_ncols=True)
        for index, batch in enumerate(bar, start=progress.batches + 1):
            window = self.recipe.window(index, self.steps_per_epoch)
            loss, correct, count = self.train_micro_batch(batch, window)
            totals.add(loss, correct, count)
            if not window.ends:
                continue
            lr = self.optimizer.param_groups[0]["lr"]   # each window's micro-batches trained at one lr
            self.optimizer_step(window.scaled(loss))
            if stop := self.guard.poll(self.scheduler.last_epoch):
                self.stop(stop, self.progress_at(epoch, index, totals, lr, start))
        if stop := self.guard.poll(self.scheduler.last_epoch, force=True):
            self.stop(stop, self.progress_at(epoch, index, totals, lr, start))
        seconds = time.perf_counter() - start
        finished = self.progress_at(epoch, self.steps_per_epoch, totals, lr, start)
        measured = reduce_totals(totals, self.runtime).read()
        return TrainingPass(loss=measured["loss"], acc=measured["acc"], lr=lr, seconds=seconds,
                            samples=totals.count, finished=finished,
                            grad_norm=None if self.grad_norms is None else self.grad_norms.mean())

    def epoch_start(self, epoch: int) -> EpochProgress:
        return EpochProgress(epoch, 0, M.RunningTotals(self.runtime.device), self.optimizer.param_groups[0]["lr"],
                             0.0)

    def progress_at(self, epoch: int, batches: int, totals: M.RunningTotals, lr: float,
                    start: float) -> EpochProgress:
        return EpochProgress(epoch, batches, totals, lr, time.perf_counter() - start, self.grad_norms)

    def train_micro_batch(self, batch, window: Window) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Forward ``batch`` and, unless it ends its window (``optimizer_step`` then backpropagates it), its
        backward. Returns ``training_step``'s (unscaled mean loss, correct, count)."""
        if window.starts:
            self.optimizer.zero_grad(set_to_none=True)
        with self.gradient_sync(window.ends):
            with self.runtime.autocast():
                loss, correct, count = self.task.training_step(self.model, batch)
            self.guard.record(loss, self.scheduler.last_epoch + 1)   # the step this loss counts toward
            if not window.ends:
                self.backward(window.scaled(loss))
        return loss, correct, count

    def gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """DDP averages gradients across ranks only at a window's last backward (``no_sync`` before it: the
        forward and backward must both run inside it)."""
        if sync or self.ddp_model is None:
            return contextlib.nullcontext()
        return self.ddp_model.no_sync()

    def stop(self, reason: str, progress: EpochProgress) -> None:
        """Raise ``Diverged`` (saving nothing), or checkpoint at ``progress`` and raise ``Preempted``; a
        checkpoint is written only of finite weights (the last update is checked here)."""
        if reason == "diverged":
            raise Diverged(self.guard.diverged_at)
        self.guard.check_model(self.task.model, self.scheduler.last_epoch)
        self.state.in_epoch = progress
        self.save_checkpoint(self.state)
        raise Preempted(self.guard.signal, self.scheduler.last_epoch)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """Backpropagate a window's last micro-batch ``loss`` (already scaled to its share), clip, step the
        optimizer and the scheduler: one optimizer step."""
        self.backward(loss)
        if self.recipe.grad_clip_norm is not None:
            self.clip_gradients()
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)   # skips the step if unscale_ found an inf/NaN gradient
            self.scaler.update()
        self.scheduler.step()

    def clip_gradients(self) -> None:
        """Scale the gradients to a global norm of at most ``grad_clip_norm``, in true units (fp16's loss scale
        taken out first); records the norm before clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        parameters = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.recipe.grad_clip_norm)
        if self.grad_norms is not None:
            self.grad_norms.add(norm)

    def evaluate_splits(self) -> dict[str, dict[str, float]]:
        """Every evaluation split (``train_eval``, ``val`` if held out, ``test``): ``{split: {"loss": ...,
        "acc": ..., extras}}``."""
        return {name: self.evaluate(loader) for name, loader in self.task.eval_loaders.items()}

    def evaluate_before_training(self) -> dict[str, float]:
        """The untrained (e.g. pretrained, before fine-tuning) model's metrics, keyed like a row:
        ``{"test/acc": ..., "train_eval/loss": ...}``. A preemption signal stops it (nothing to save yet)."""
        try:
            return keyed_by_split(self.evaluate_splits())
        except EvaluationStopped:
            raise Preempted(self.guard.signal, self.scheduler.last_epoch) from None

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        self.eval_model.eval()
        with self.runtime.autocast():
            return self.task.evaluate(self.eval_model, self.guard.watch_evaluation(loader))
