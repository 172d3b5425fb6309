"""Why it generalizes, measured: the flatness of a solution (the escape experiment is research code in
``experiments/escape/``, not part of the package).

- :mod:`~dualadam.analysis.hessian`: top Hessian eigenvalue (Lanczos) and trace (Hutchinson) of the loss.
- :mod:`~dualadam.analysis.directions`, :mod:`~dualadam.analysis.landscape`, :mod:`~dualadam.analysis.plots`:
  filter-normalized slices around a solution and the loss between two solutions, as PNGs.
"""

from dualadam.analysis.directions import filter_normalized_direction, filter_norms
from dualadam.analysis.evaluation import eval_mode, mean_loss, seeded_batches, supervised_loss
from dualadam.analysis.hessian import (
    SHARPNESS_KEYS,
    TOP_EIGENVALUE,
    TRACE,
    TRACE_STDERR,
    hessian_top_eigenvalue,
    hessian_trace,
    hessian_vector_product,
    measure_sharpness,
)
from dualadam.analysis.landscape import loss_along_line, loss_on_directions, loss_slice_1d, loss_surface_2d
from dualadam.analysis.plots import (
    plot_loss_along_line,
    plot_loss_slice_1d,
    plot_loss_surface_2d,
    write_landscape_plots,
    write_line_plot,
)

__all__ = [
    "SHARPNESS_KEYS", "TOP_EIGENVALUE", "TRACE", "TRACE_STDERR",
    "eval_mode", "filter_norms", "filter_normalized_direction", "hessian_top_eigenvalue", "hessian_trace",
    "hessian_vector_product", "loss_along_line", "loss_on_directions", "loss_slice_1d", "loss_surface_2d",
    "mean_loss", "measure_sharpness", "plot_loss_along_line", "plot_loss_slice_1d", "plot_loss_surface_2d",
    "seeded_batches", "supervised_loss", "write_landscape_plots", "write_line_plot",
]
