"""What every flatness measurement shares: the loss over a fixed set of batches, in eval mode.

A *loss function* here is ``loss_fn(model, batch) -> 0-d tensor``, the mean loss of one batch, so a task's own
training step plugs in unchanged (``lambda m, b: task.training_step(m, b)[0]``) and :func:`supervised_loss`
wraps a plain criterion. The loss measured is the mean of the per-batch means: with equal-sized batches (as
:func:`seeded_batches` makes them) that is the mean over every example.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def supervised_loss(criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> LossFn:
    """``loss_fn`` for ``(inputs, targets)`` batches: ``criterion(model(inputs), targets)``, on the model's device."""

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        inputs, targets = batch
        device = next(model.parameters()).device
        return criterion(model(inputs.to(device)), targets.to(device))

    return loss_fn


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the Hessian is taken over: those with ``requires_grad`` (frozen ones are constants)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no parameter with requires_grad=True, so its loss has no Hessian; "
                         "unfreeze the parameters to measure")
    return params


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (batch norm uses its running statistics, dropout is off) and full precision, restoring each
    submodule's own train/eval flag afterwards, so a partly frozen model comes back as it was."""
    flags = [(module, module.training) for module in model.modules()]
    device_type = next(model.parameters(), torch.empty(0)).device.type
    model.eval()
    try:
        with torch.autocast(device_type, enabled=False):
            yield model
    finally:
        for module, training in flags:
            module.training = training


def check_batches(batches: Sequence) -> None:
    if len(batches) == 0:
        raise ValueError("batches is empty: pass a fixed list of at least one batch (see seeded_batches)")


@torch.no_grad()
def mean_loss(model: nn.Module, loss_fn: LossFn, batches: Sequence) -> float:
    """Mean of the per-batch mean losses at the model's current parameters (call inside :func:`eval_mode`)."""
    check_batches(batches)
    return sum(float(loss_fn(model, batch)) for batch in batches) / len(batches)


def seeded_batches(dataset, *, num_batches: int, batch_size: int, seed: int,
                   collate_fn: Callable = default_collate) -> list:
    """``num_batches`` disjoint batches of ``batch_size`` examples drawn without replacement by ``seed``.

    Pass the dataset with its evaluation transform: random augmentation would make the Hessian change from
    one Hessian-vector product to the next, and Lanczos needs one fixed matrix.
    """
    needed = num_batches * batch_size
    if num_batches < 1 or batch_size < 1:
        raise ValueError(f"num_batches={num_batches} and batch_size={batch_size} must both be >= 1")
    if needed > len(dataset):
        raise ValueError(f"{num_batches} batches of {batch_size} need {needed} examples but the dataset has "
                         f"{len(dataset)}; lower num_batches or batch_size")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:needed].tolist()
    return [collate_fn([dataset[i] for i in order[k * batch_size:(k + 1) * batch_size]])
            for k in range(num_batches)]
