"""Measurements of the final solution, taken once at the end of training (``analysis.sharpness=true``).

The loss whose curvature is measured is the task's own training loss on the first ``analysis.batches``
batches of the fixed train-eval set (training images, no augmentation), so the Hessian is one fixed matrix
and runs with different seeds or optimizers are measured on the same images. Works for any task.
"""

from __future__ import annotations

import itertools
import logging

import torch
from omegaconf import DictConfig

from dualadam.analysis import measure_sharpness
from dualadam.analysis.progress import Stage, no_stage

log = logging.getLogger(__name__)


def _as_float32(batch):
    """Hessian-vector products in bf16 are too coarse; measure in fp32 whatever the training precision."""
    if isinstance(batch, torch.Tensor):
        return batch.float() if batch.is_floating_point() else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_as_float32(item) for item in batch)
    if isinstance(batch, dict):
        return {key: _as_float32(value) for key, value in batch.items()}
    return batch


def measurement_batches(task, count: int) -> list:
    """The first ``count`` train-eval batches, in fp32: the fixed data that defines the measured loss."""
    return [_as_float32(b) for b in itertools.islice(task.eval_loaders["train_eval"], count)]


def task_loss(task):
    """``loss_fn(model, batch)``: the task's own mean training loss, as the analysis functions expect."""
    def loss_fn(model, batch):
        return task.training_step(model, batch)[0]
    return loss_fn


def final_sharpness(task, analysis: DictConfig, stage: Stage = no_stage) -> dict[str, float]:
    """``sharpness/hessian_top_eig``, ``sharpness/hessian_trace`` and its standard error for ``task.model``
    (``stage`` reports the progress of its two stages: :mod:`dualadam.analysis.progress`)."""
    batches = measurement_batches(task, analysis.batches)
    model = task.model.float()
    loss_fn = task_loss(task)
    log.info("Measuring sharpness on %d train-eval batches (%d Lanczos iterations, %d Hutchinson probes)",
             len(batches), analysis.eig_iters, analysis.trace_samples)
    return measure_sharpness(model, loss_fn, batches, eig_iters=analysis.eig_iters,
                             trace_samples=analysis.trace_samples, seed=analysis.seed, stage=stage)
