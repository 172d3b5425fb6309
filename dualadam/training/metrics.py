"""The metric names every run records, and the arithmetic behind them.

These names are a contract: ``metrics.jsonl``, ``summary.json``, W&B and the scripts that read results all use
them, so import the constants rather than spelling the strings. Accuracies are in percent (as in the paper) and
losses are mean cross-entropy per sample (nats).
"""

from __future__ import annotations

import torch

EPOCH = "epoch"                          # epochs completed, 1-based: the record after the first epoch has 1
TRAIN_LOSS = "train/loss"                # seen during training: augmented batches, train mode, running weights
TRAIN_ACC = "train/acc"
TRAIN_EVAL_LOSS = "train_eval/loss"      # a fixed train subset, eval mode, no augmentation, end-of-epoch weights
TRAIN_EVAL_ACC = "train_eval/acc"
TEST_LOSS = "test/loss"
TEST_ACC = "test/acc"
VAL_LOSS = "val/loss"                    # held-out training data (dataset.val_size): only in runs that have it
VAL_ACC = "val/acc"
GAP_ACC = "gap/acc"                      # train_eval/acc - test/acc, in percentage points
GAP_LOSS = "gap/loss"                    # test/loss - train_eval/loss
LR = "lr"                                # the learning rate of the epoch's last optimizer step (param group 0)
INVERSE_ADAM_RATE = "optim/inverse_adam_rate"  # DualAdam's alpha after the epoch; 0.0 for other optimizers
OPTIMIZER_STEPS = "optim/steps"          # optimizer steps taken so far
EPOCH_TIME = "time/epoch_s"              # wall-clock seconds of the training pass (evaluation excluded)
EVAL_TIME = "time/eval_s"                # wall-clock seconds of both evaluations
THROUGHPUT = "throughput/images_per_s"   # training samples per second of the training pass
GRAD_NORM = "train/grad_norm"            # mean global gradient norm before clipping, over the epoch's steps:
                                         # recorded (after THROUGHPUT) only by runs with trainer.grad_clip_norm

EPOCH_METRIC_KEYS: tuple[str, ...] = (
    EPOCH, TRAIN_LOSS, TRAIN_ACC, TRAIN_EVAL_LOSS, TRAIN_EVAL_ACC, TEST_LOSS, TEST_ACC, GAP_ACC, GAP_LOSS,
    LR, INVERSE_ADAM_RATE, OPTIMIZER_STEPS, EPOCH_TIME, EVAL_TIME, THROUGHPUT,
)
"""Every key of every ``metrics.jsonl`` record, in the order they are written."""

VALIDATION_METRIC_KEYS: tuple[str, ...] = (VAL_LOSS, VAL_ACC)
"""Keys a record has only when the run holds out a validation split, written right after the train-eval keys.
A run without one has no such keys at all (not NaN), so its records are exactly ``EPOCH_METRIC_KEYS``."""

HIGHER_IS_BETTER = {TRAIN_ACC, TRAIN_EVAL_ACC, TEST_ACC, VAL_ACC}


def epoch_metric_keys(validation: bool) -> tuple[str, ...]:
    """The keys of a metrics record, in order, for a run with or without a validation split."""
    if not validation:
        return EPOCH_METRIC_KEYS
    after = EPOCH_METRIC_KEYS.index(TRAIN_EVAL_ACC) + 1
    return (*EPOCH_METRIC_KEYS[:after], *VALIDATION_METRIC_KEYS, *EPOCH_METRIC_KEYS[after:])


def selection_split(monitor: str) -> str | None:
    """The data split whose metric ``trainer.monitor`` names, e.g. ``"val"`` for ``val/acc``: the split that
    selected summary.json's "best" epoch. ``"test"`` is the paper protocol (selected on the test set); None
    for a metric of no split (``lr``, ``epoch``...)."""
    split = monitor.partition("/")[0]
    return split if split in ("train", "train_eval", "val", "test") else None


def generalization_gap(train_eval: dict[str, float], test: dict[str, float]) -> dict[str, float]:
    """Gap between fitting the training set and generalizing: positive means the train set is fitted better.

    Both inputs are ``{"loss": ..., "acc": ...}`` from the same weights in eval mode, so augmentation and
    train-mode batch-norm statistics do not leak into the gap.
    """
    return {GAP_ACC: train_eval["acc"] - test["acc"], GAP_LOSS: test["loss"] - train_eval["loss"]}


def is_improvement(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` beats ``best`` for ``metric`` (higher for accuracies, lower for everything else)."""
    if best is None:
        return True
    return value > best if metric in HIGHER_IS_BETTER else value < best


class RunningTotals:
    """Loss and correct-prediction sums kept on the device, read with a single host sync per epoch.

    ``add`` only queues device ops, so the step loop never waits for the GPU; ``read`` is the one sync.
    """

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.count = 0  # a host int: batch sizes are known without asking the device

    def add(self, mean_loss: torch.Tensor, correct: torch.Tensor, count: int) -> None:
        """``mean_loss``: 0-d tensor, the batch's mean loss; ``correct``: 0-d count; ``count``: batch size."""
        self.loss_sum += mean_loss.detach().float() * count
        self.correct += correct.detach()
        self.count += count

    def read(self) -> dict[str, float]:
        """``{"loss": mean loss per sample, "acc": percent correct}``; NaN if nothing was added."""
        if self.count == 0:
            return {"loss": float("nan"), "acc": float("nan")}
        loss_sum, correct = torch.stack([self.loss_sum.double(), self.correct.double()]).tolist()
        return {"loss": loss_sum / self.count, "acc": 100.0 * correct / self.count}
