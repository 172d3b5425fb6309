"""PNG plots of loss-landscape slices, and one-call writers that measure and plot for a run directory.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot), so plotting never touches a GUI backend or
global state and works in worker processes and tests alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor, nn

from dualadam.analysis.directions import filter_normalized_direction
from dualadam.analysis.evaluation import LossFn
from dualadam.analysis.landscape import loss_along_line, loss_slice_1d, loss_surface_2d
from dualadam.analysis.progress import Stage, no_stage


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_loss_slice_1d(alphas, losses, path: str | Path, *, title: str = "") -> Path:
    """Loss against the step ``alpha`` along one filter-normalized direction."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    ax.plot(np.asarray(alphas), np.asarray(losses), color="tab:blue")
    ax.axvline(0.0, color="gray", lw=0.8, ls=":")
    ax.set(xlabel="alpha (filter-normalized direction)", ylabel="training loss", title=title or "1-D loss slice")
    return _save(fig, path)


def plot_loss_surface_2d(alphas, betas, losses, path: str | Path, *, title: str = "", levels: int = 30) -> Path:
    """Contours of the loss on the plane of two filter-normalized directions; ``losses[len(betas), len(alphas)]``.

    Contours are spaced in log(loss) so the basin floor is resolved as well as the walls.
    """
    surface = np.asarray(losses)
    fig = Figure(figsize=(5, 4.2))
    ax = fig.add_subplot()
    floor = max(float(surface.min()), 1e-12)
    contours = ax.contourf(np.asarray(alphas), np.asarray(betas), np.log10(np.maximum(surface, floor)),
                           levels=levels, cmap="viridis")
    fig.colorbar(contours, ax=ax, label="log10 training loss")
    ax.plot([0], [0], marker="*", color="white", markersize=10)
    ax.set(xlabel="alpha (direction 1)", ylabel="beta (direction 2)", title=title or "2-D loss surface")
    ax.set_aspect("equal")
    return _save(fig, path)


def plot_loss_along_line(ts, losses, path: str | Path, *, labels: tuple[str, str] = ("start", "end"),
                         title: str = "") -> Path:
    """Loss on the straight line from one solution (t=0) to another (t=1), as a PNG."""
    return _save(loss_along_line_figure(ts, losses, labels=labels, title=title), path)


def loss_along_line_figure(ts, losses, *, labels: tuple[str, str] = ("start", "end"), title: str = "") -> Figure:
    """The figure :func:`plot_loss_along_line` saves. The two solutions are named in a legend below the
    axes, never over the title: run names are long."""
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(np.asarray(ts), np.asarray(losses), color="tab:purple", label="loss on the line")
    for t, label, style in zip((0.0, 1.0), labels, ("--", ":")):
        ax.axvline(t, color="gray", lw=1.0, ls=style, label=f"t = {t:g}: {label}")
    ax.set(xlabel="t  (theta = (1 - t) theta_start + t theta_end)", ylabel="training loss")
    ax.set_title(title or "Loss on the line between two solutions", pad=8)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize="small", frameon=False)
    return fig


def write_landscape_plots(model: nn.Module, loss_fn: LossFn, batches: Sequence, out_dir: str | Path, *,
                          seed: int = 0, span: float = 1.0, points_1d: int = 41, points_2d: int = 21,
                          stage: Stage = no_stage) -> dict:
    """Measure and plot the 1-D and 2-D filter-normalized slices around the model's current parameters.

    Writes ``landscape_1d.png`` and ``landscape_2d.png`` into ``out_dir``; returns their paths and the
    numbers plotted (lists, JSON-ready). The 2-D plane uses directions from ``seed`` and ``seed + 1``; the
    1-D slice uses the first of them. Cost: ``points_1d + points_2d**2`` loss evaluations over ``batches``;
    ``stage`` reports them (see :mod:`dualadam.analysis.progress`).
    """
    out_dir = Path(out_dir)
    first = filter_normalized_direction(model, seed=seed)
    second = filter_normalized_direction(model, seed=seed + 1)
    with stage("1-D landscape slice (grid points)", points_1d) as tick:
        alphas, losses_1d = loss_slice_1d(model, loss_fn, batches, first, span=span, points=points_1d,
                                          progress=tick)
    with stage(f"2-D landscape surface ({points_2d}x{points_2d} grid points)", points_2d**2) as tick:
        axis_a, axis_b, surface = loss_surface_2d(model, loss_fn, batches, [first, second], span=span,
                                                  points=points_2d, progress=tick)
    return {
        "landscape_1d_png": str(plot_loss_slice_1d(alphas, losses_1d, out_dir / "landscape_1d.png")),
        "landscape_2d_png": str(plot_loss_surface_2d(axis_a, axis_b, surface, out_dir / "landscape_2d.png")),
        "alphas": alphas.tolist(), "losses_1d": losses_1d.tolist(), "surface": surface.tolist(),
    }


def write_line_plot(model: nn.Module, loss_fn: LossFn, batches: Sequence, start: Mapping[str, Tensor],
                    end: Mapping[str, Tensor], path: str | Path, *, labels: tuple[str, str] = ("start", "end"),
                    points: int = 25, stage: Stage = no_stage) -> dict:
    """Measure the loss on the line between two state dicts and plot it to ``path``; returns path and numbers."""
    with stage("loss on the line to the other run (points)", points) as tick:
        ts, losses = loss_along_line(model, loss_fn, batches, start, end, points=points, progress=tick)
    return {"line_png": str(plot_loss_along_line(ts, losses, path, labels=labels)),
            "ts": ts.tolist(), "losses": losses.tolist()}
