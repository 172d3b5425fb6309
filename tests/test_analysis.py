"""Flatness metrics against closed forms: Hessian top eigenvalue and trace, filter-normalized directions,
loss slices and the loss between two solutions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dualadam.analysis import (
    SHARPNESS_KEYS,
    filter_normalized_direction,
    filter_norms,
    hessian_top_eigenvalue,
    hessian_trace,
    loss_along_line,
    loss_slice_1d,
    loss_surface_2d,
    mean_loss,
    measure_sharpness,
    seeded_batches,
    supervised_loss,
    write_landscape_plots,
    write_line_plot,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Quadratic(nn.Module):
    """loss = 0.5 theta^T A theta + b^T theta over two parameters of different shapes (flattened in order)."""

    def __init__(self, hessian: torch.Tensor, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = hessian.shape[0]
        self.register_buffer("hessian", hessian)
        self.register_buffer("linear", torch.randn(n, generator=g, dtype=hessian.dtype))
        self.matrix_part = nn.Parameter(torch.randn(3, 2, generator=g, dtype=hessian.dtype))
        self.vector_part = nn.Parameter(torch.randn(n - 6, generator=g, dtype=hessian.dtype))

    def theta(self) -> torch.Tensor:
        return torch.cat([self.matrix_part.reshape(-1), self.vector_part])

    def forward(self, _batch=None) -> torch.Tensor:
        theta = self.theta()
        return 0.5 * theta @ self.hessian @ theta + self.linear @ theta


def quadratic_loss(model, batch):
    return model(batch)


def symmetric_with_spectrum(eigenvalues, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def least_squares_problem(n=64, features=5, batches=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g) * torch.linspace(0.5, 2.0, features)
    y = torch.randn(n, 1, generator=g)
    model = nn.Linear(features, 1)
    size = n // batches
    data = [(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]) for i in range(batches)]
    design = torch.cat([x, torch.ones(n, 1)], dim=1).double()  # params in order: weight (1, features), bias
    return model, data, 2 * design.T @ design / n                 # Hessian of the mean squared error


def small_cnn(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3))


def image_batches(count=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 6, 6, generator=g), torch.randint(0, 3, (size,), generator=g))
            for _ in range(count)]


def test_top_eigenvalue_of_quadratic_is_the_largest_algebraic_one():
    # The most negative eigenvalue has the largest magnitude, where power iteration would be misled.
    spectrum = [-7.0, 3.0, 2.6, 2.0, 1.0, 0.5, 0.1, -0.2, -1.0, -3.0, 0.0, 1.5]
    model = Quadratic(symmetric_with_spectrum(spectrum))
    top = hessian_top_eigenvalue(model, quadratic_loss, [None], iters=12, tol=1e-8, seed=1)
    assert top == pytest.approx(3.0, rel=1e-3)


def test_top_eigenvalue_of_least_squares_layer_matches_closed_form():
    model, batches, hessian = least_squares_problem()
    exact = float(torch.linalg.eigvalsh(hessian)[-1])
    top = hessian_top_eigenvalue(model, supervised_loss(F.mse_loss), batches, iters=6, tol=1e-5, seed=0)
    assert top == pytest.approx(exact, rel=1e-3)


def test_lanczos_warns_when_it_runs_out_of_iterations():
    model = Quadratic(symmetric_with_spectrum([float(k) for k in range(1, 31)]))
    with pytest.warns(RuntimeWarning, match="raise iters"):
        hessian_top_eigenvalue(model, quadratic_loss, [None], iters=2, tol=1e-12)


def test_hutchinson_trace_is_within_three_standard_errors_and_the_error_is_honest():
    hessian = symmetric_with_spectrum(torch.linspace(-1.0, 4.0, 30).tolist(), seed=3)
    model = Quadratic(hessian)
    samples = 400
    estimate, stderr = hessian_trace(model, quadratic_loss, [None], samples=samples, seed=0)
    exact = float(hessian.trace())
    assert abs(estimate - exact) <= 3 * stderr
    # Var(v^T A v) = 2 * (sum of squared off-diagonal entries) for Rademacher v: the reported error must
    # estimate that, not merely be large enough to pass the line above.
    off_diagonal = float((hessian**2).sum() - (hessian.diagonal() ** 2).sum())
    assert stderr == pytest.approx(math.sqrt(2 * off_diagonal / samples), rel=0.2)


def test_hutchinson_trace_of_least_squares_layer():
    model, batches, hessian = least_squares_problem(features=8, seed=2)
    estimate, stderr = hessian_trace(model, supervised_loss(F.mse_loss), batches, samples=200, seed=5)
    assert stderr > 0
    assert abs(estimate - float(hessian.trace())) <= 3 * stderr


def test_measure_sharpness_is_seeded_and_leaves_the_model_as_it_was():
    model = small_cnn()
    model.train()
    batches = image_batches()
    running_mean = model[1].running_mean.clone()
    params = [p.detach().clone() for p in model.parameters()]
    first = measure_sharpness(model, supervised_loss(F.cross_entropy), batches, eig_iters=25, trace_samples=4,
                              seed=3)
    again = measure_sharpness(model, supervised_loss(F.cross_entropy), batches, eig_iters=25, trace_samples=4,
                              seed=3)
    assert set(first) == set(SHARPNESS_KEYS)
    assert first == again
    assert all(math.isfinite(v) for v in first.values()) and first["sharpness/hessian_top_eig"] > 0
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, running_mean)  # eval mode: batch norm statistics untouched
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert all(p.grad is None for p in model.parameters())


def test_filter_normalized_directions_have_the_filter_norms_of_the_weights():
    model = small_cnn()
    direction = filter_normalized_direction(model, seed=0)
    for param, d in zip(model.parameters(), direction):
        assert d.shape == param.shape
        if param.dim() > 1:
            torch.testing.assert_close(filter_norms(d), filter_norms(param.detach()), rtol=1e-5, atol=0)
        else:
            assert torch.count_nonzero(d) == 0  # biases and batch-norm parameters stay put (Li et al.)
    kept = filter_normalized_direction(model, seed=0, ignore_bias_and_bn=False)
    assert all(torch.equal(d, p) for p, d in zip(model.parameters(), kept) if p.dim() <= 1)
    assert all(torch.equal(a, b) for a, b in zip(direction, filter_normalized_direction(model, seed=0)))
    assert not torch.equal(direction[0], filter_normalized_direction(model, seed=1)[0])


def test_slices_of_a_quadratic_follow_the_closed_form_and_restore_parameters():
    hessian = symmetric_with_spectrum([2.0, 1.0, 0.5, 0.3, 3.0, 1.2, 0.7, 0.9], seed=4)
    model = Quadratic(hessian)
    theta = model.theta().detach()
    d1 = filter_normalized_direction(model, seed=0)
    d2 = filter_normalized_direction(model, seed=1)
    alphas, losses = loss_slice_1d(model, quadratic_loss, [None], d1, span=2.0, points=9)
    flat = torch.cat([t.reshape(-1) for t in d1])
    gradient = hessian @ theta + model.linear
    expected = model(None).detach() + alphas * (gradient @ flat) + 0.5 * alphas**2 * (flat @ hessian @ flat)
    torch.testing.assert_close(losses, expected, rtol=1e-10, atol=1e-10)
    _, _, surface = loss_surface_2d(model, quadratic_loss, [None], [d1, d2], span=1.0, points=5)
    assert surface.shape == (5, 5)
    assert surface[2, 2].item() == pytest.approx(model(None).item(), rel=1e-12)
    assert torch.equal(model.theta().detach(), theta)


def test_loss_along_line_hits_both_ends_and_restores_the_model():
    start_model, end_model = small_cnn(seed=0), small_cnn(seed=1)
    end_model[1].running_mean.fill_(0.5)
    loss_fn, batches = supervised_loss(F.cross_entropy), image_batches()
    probe = small_cnn(seed=2)
    before = {k: v.clone() for k, v in probe.state_dict().items()}
    ts, losses = loss_along_line(probe, loss_fn, batches, start_model.state_dict(), end_model.state_dict(),
                                 points=5, t_range=(0.0, 1.0))
    for model, value in ((start_model, losses[0]), (end_model, losses[-1])):
        model.eval()
        assert value.item() == pytest.approx(mean_loss(model, loss_fn, batches), rel=1e-6)
    assert all(torch.equal(v, probe.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="same architecture"):
        loss_along_line(probe, loss_fn, batches, start_model.state_dict(), nn.Linear(2, 2).state_dict())


def test_plot_writers_write_pngs(tmp_path):
    model, loss_fn, batches = small_cnn(), supervised_loss(F.cross_entropy), image_batches(count=1)
    written = write_landscape_plots(model, loss_fn, batches, tmp_path, points_1d=5, points_2d=3)
    line = write_line_plot(model, loss_fn, batches, small_cnn(seed=1).state_dict(), model.state_dict(),
                           tmp_path / "line.png", labels=("Adam", "DualAdam"), points=4)
    for path in (written["landscape_1d_png"], written["landscape_2d_png"], line["line_png"]):
        assert open(path, "rb").read(8) == PNG_MAGIC
    assert len(written["losses_1d"]) == 5 and len(written["surface"]) == 3


def test_line_plot_names_the_runs_below_the_axes_not_over_the_title():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from dualadam.analysis.plots import loss_along_line_figure

    long_names = ("resnet18_cifar-adam-lr0.001-seed1-3f9a2c1d", "resnet18_cifar-dualadam-lr0.001-seed1-8b7e6d5c")
    fig = loss_along_line_figure([-0.25, 0.0, 0.5, 1.0, 1.25], [2.0, 0.1, 0.8, 0.2, 2.5], labels=long_names)
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    title = ax.title.get_window_extent(renderer)
    legend = ax.get_legend()
    texts = [text.get_text() for text in legend.get_texts()]
    assert any(long_names[0] in text for text in texts) and any(long_names[1] in text for text in texts)
    others = [legend.get_window_extent(renderer), ax.xaxis.label.get_window_extent(renderer),
              *(text.get_window_extent(renderer) for text in ax.texts)]
    assert title.width > 0 and not any(title.overlaps(box) for box in others)
    assert legend.get_window_extent(renderer).y1 < ax.get_window_extent(renderer).y0   # below the axes


@pytest.mark.filterwarnings("ignore:Lanczos did not reach")
def test_measurements_report_one_tick_per_unit_of_work(tmp_path):
    model, loss_fn, batches = small_cnn(), supervised_loss(F.cross_entropy), image_batches(count=1)
    stages = []

    def stage(description, total):
        from contextlib import contextmanager

        @contextmanager
        def counting():
            ticks = []
            yield lambda: ticks.append(1)
            stages.append((description, total, len(ticks)))
        return counting()

    measure_sharpness(model, loss_fn, batches, eig_iters=3, eig_tol=0.0, trace_samples=4, stage=stage)
    write_landscape_plots(model, loss_fn, batches, tmp_path, points_1d=5, points_2d=3, stage=stage)
    assert [(total, ticks) for _, total, ticks in stages] == [(3, 3), (4, 4), (5, 5), (9, 9)]
    assert ["Lanczos" in stages[0][0], "Hutchinson" in stages[1][0], "1-D" in stages[2][0],
            "2-D" in stages[3][0]] == [True] * 4


def test_seeded_batches_are_fixed_disjoint_and_checked():
    dataset = TensorDataset(torch.arange(20).float()[:, None], torch.arange(20))
    batches = seeded_batches(dataset, num_batches=3, batch_size=4, seed=7)
    again = seeded_batches(dataset, num_batches=3, batch_size=4, seed=7)
    labels = torch.cat([b[1] for b in batches])
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    assert len(set(labels.tolist())) == 12
    with pytest.raises(ValueError, match="dataset has 20"):
        seeded_batches(dataset, num_batches=6, batch_size=4, seed=0)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="batches is empty"):
        hessian_top_eigenvalue(small_cnn(), supervised_loss(F.cross_entropy), [])
    frozen = small_cnn().requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        hessian_trace(frozen, supervised_loss(F.cross_entropy), image_batches())
