"""Loss-landscape slices: the loss on a line or plane through the solution, and between two solutions.

Slices move the trainable parameters only and restore them afterwards, even on error. The loss is the mean
over a fixed list of batches in eval mode (see :mod:`dualadam.analysis.evaluation`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from dualadam.analysis.evaluation import LossFn, eval_mode, mean_loss, trainable_parameters
from dualadam.analysis.progress import Tick, tick_of


@contextmanager
def _restored_parameters(model: nn.Module) -> Iterator[tuple[list[nn.Parameter], list[Tensor]]]:
    params = trainable_parameters(model)
    saved = [p.detach().clone() for p in params]
    try:
        yield params, saved
    finally:
        with torch.no_grad():
            for p, original in zip(params, saved):
                p.copy_(original)


def loss_on_directions(model: nn.Module, loss_fn: LossFn, batches: Sequence,
                       directions: Sequence[Sequence[Tensor]], coordinates: Tensor, *,
                       progress: Tick | None = None) -> Tensor:
    """Loss at ``theta + sum_k coordinates[i, k] * directions[k]`` for each row ``i``.

    ``coordinates``: shape [points, len(directions)]. Returns float64 losses, shape [points].
    ``progress()`` is called after each point.
    """
    if coordinates.dim() != 2 or coordinates.shape[1] != len(directions):
        raise ValueError(f"coordinates has shape {tuple(coordinates.shape)}; expected [points, {len(directions)}] "
                         "(one column per direction)")
    losses = torch.empty(coordinates.shape[0], dtype=torch.float64)
    with eval_mode(model), _restored_parameters(model) as (params, origin), torch.no_grad():
        for i, point in enumerate(coordinates.tolist()):
            for k, (p, p0) in enumerate(zip(params, origin)):
                p.copy_(p0)
                for c, direction in zip(point, directions):
                    p.add_(direction[k], alpha=c)
            losses[i] = mean_loss(model, loss_fn, batches)
            tick_of(progress)()
    return losses


def loss_slice_1d(model: nn.Module, loss_fn: LossFn, batches: Sequence, direction: Sequence[Tensor], *,
                  span: float = 1.0, points: int = 41, progress: Tick | None = None) -> tuple[Tensor, Tensor]:
    """(alphas, losses): the loss at ``theta + alpha * direction`` for ``points`` alphas in [-span, span]."""
    alphas = torch.linspace(-span, span, points, dtype=torch.float64)
    return alphas, loss_on_directions(model, loss_fn, batches, [direction], alphas[:, None], progress=progress)


def loss_surface_2d(model: nn.Module, loss_fn: LossFn, batches: Sequence, directions: Sequence[Sequence[Tensor]],
                    *, span: float = 1.0, points: int = 21,
                    progress: Tick | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(alphas, betas, losses[len(betas), len(alphas)]) at ``theta + alpha * d1 + beta * d2`` on a square grid."""
    if len(directions) != 2:
        raise ValueError(f"loss_surface_2d needs exactly 2 directions, got {len(directions)}")
    axis = torch.linspace(-span, span, points, dtype=torch.float64)
    betas, alphas = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([alphas.reshape(-1), betas.reshape(-1)], dim=1)
    losses = loss_on_directions(model, loss_fn, batches, directions, grid, progress=progress)
    return axis, axis.clone(), losses.view(points, points)


def interpolate_state_dicts(start: Mapping[str, Tensor], end: Mapping[str, Tensor], t: float) -> dict[str, Tensor]:
    """``(1 - t) * start + t * end`` for every floating-point entry (parameters and batch-norm running
    statistics alike, so the interpolated network's normalization moves with its weights); integer entries
    such as ``num_batches_tracked`` are taken from ``start``."""
    if start.keys() != end.keys():
        missing = sorted(set(start) ^ set(end))
        raise ValueError(f"The two parameter sets have different entries ({missing[:5]}...); both must come from "
                         "the same architecture")
    return {key: torch.lerp(value, end[key].to(value), t) if value.is_floating_point() else value
            for key, value in start.items()}


def loss_along_line(model: nn.Module, loss_fn: LossFn, batches: Sequence, start: Mapping[str, Tensor],
                    end: Mapping[str, Tensor], *, points: int = 25, t_range: tuple[float, float] = (-0.25, 1.25),
                    progress: Tick | None = None) -> tuple[Tensor, Tensor]:
    """(ts, losses) on the straight line between two state dicts of ``model``'s architecture (t=0 is
    ``start``, t=1 is ``end``; the default range also looks a quarter beyond each end).

    The model's own state is restored afterwards. ``progress()`` is called after each point.
    """
    ts = torch.linspace(t_range[0], t_range[1], points, dtype=torch.float64)
    original = {key: value.detach().clone() for key, value in model.state_dict().items()}
    losses = torch.empty(points, dtype=torch.float64)
    try:
        with eval_mode(model):
            for i, t in enumerate(ts.tolist()):
                model.load_state_dict(interpolate_state_dicts(start, end, t))
                losses[i] = mean_loss(model, loss_fn, batches)
                tick_of(progress)()
    finally:
        model.load_state_dict(original)
    return ts, losses
