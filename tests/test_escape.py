"""The escape simulator against theory: landscape, noise model, per-particle optimizer state, censored escape
times, Kramers' rate for SGD, determinism, and the tiny study end to end through its command line.

The study is research code in experiments/escape/ (not in the installed package): its modules are imported
from that folder, as its run script imports them."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "escape"))

from landscape import DoubleWell, barrier_direction
from simulate import ESCAPE_OPTIMIZERS, escape_optimizer
from study import EscapeStudyConfig, KramersCheckConfig, kramers_check, run_escape_study
from survival import estimate_escape_time, mean_escape_steps
from theory import double_well_kramers_steps, double_well_mfpt_steps

ESCAPE_DIR = Path(__file__).resolve().parents[1] / "experiments" / "escape"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _well(dim, direction="diagonal", particles=2):
    return DoubleWell.build([50.0, 200.0], particles=particles, barrier=0.3, batch_size=16.0, dim=dim,
                            direction=direction, transverse_curvature=80.0, dtype=torch.float64)


@pytest.mark.parametrize("dim,direction", [(1, "diagonal"), (5, "diagonal"), (5, "axis")])
def test_landscape_has_the_stated_gradient_curvature_and_barrier(dim, direction):
    well = _well(dim, direction)
    u = well.direction
    x = (well.start() + 0.05 * torch.randn(4, dim, generator=torch.Generator().manual_seed(0),
                                           dtype=torch.float64)).requires_grad_(True)
    (autograd,) = torch.autograd.grad(well.loss(x).sum(), x)
    torch.testing.assert_close(well.gradient(x.detach()), autograd)
    assert well.loss(well.start()).abs().max() < 1e-12
    transverse = torch.eye(dim, dtype=torch.float64) - torch.outer(u, u)
    for row, h in ((0, 50.0), (2, 200.0)):
        def single(point, row=row):
            return well.loss(torch.cat([well.start()[:row], point[None], well.start()[row + 1:]]))[row]
        expected = h * torch.outer(u, u) + (80.0 if dim > 1 else 0.0) * transverse
        torch.testing.assert_close(torch.autograd.functional.hessian(single, well.start()[row]), expected)
        saddle_hessian = torch.autograd.functional.hessian(single, torch.zeros(dim, dtype=torch.float64))
        assert float(u @ saddle_hessian @ u) == pytest.approx(-h / 2)
    assert well.loss(torch.zeros(4, dim, dtype=torch.float64)).tolist() == pytest.approx([0.3] * 4)


def test_noise_covariance_is_the_minimum_hessian_over_the_batch_size():
    well = DoubleWell.build([200.0], particles=200_000, barrier=0.3, batch_size=16.0, dim=4,
                            transverse_curvature=80.0, dtype=torch.float64)
    noise = well.sample_noise(torch.Generator().manual_seed(0))
    u = well.direction
    expected = (200.0 * torch.outer(u, u) + 80.0 * (torch.eye(4, dtype=torch.float64) - torch.outer(u, u))) / 16
    torch.testing.assert_close(noise.T @ noise / noise.shape[0], expected, atol=0.12, rtol=0)  # ~4 standard errors


@pytest.mark.parametrize("name", sorted(ESCAPE_OPTIMIZERS))
def test_particles_in_one_tensor_keep_their_own_optimizer_state(name):
    """One [N, d] parameter under one optimizer equals N optimizers with one particle each."""
    grads = torch.randn(30, 3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    together = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    alone = [torch.zeros(1, 2, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    spec = escape_optimizer(name)
    optimizers = [spec.build([together], 0.01, 0.05)] + [spec.build([p], 0.01, 0.05) for p in alone]
    for grad in grads:
        together.grad = grad.clone()
        for i, p in enumerate(alone):
            p.grad = grad[i:i + 1].clone()
        for opt in optimizers:
            opt.step()
    torch.testing.assert_close(together.detach(), torch.cat([p.detach() for p in alone]), rtol=1e-12, atol=1e-14)


def test_censored_estimate_recovers_the_rate_that_ignoring_censoring_misses():
    rng = np.random.default_rng(0)
    true_tau, horizon = 1000.0, 300
    times = rng.exponential(true_tau, size=20_000)
    escaped = times <= horizon
    steps = np.where(escaped, np.ceil(times), horizon).astype(np.int64)
    estimate, _ = estimate_escape_time(steps, escaped, resamples=200, rng=rng)
    assert estimate.mean_steps == pytest.approx(true_tau, rel=0.04)
    assert estimate.ci_low < true_tau < estimate.ci_high
    assert steps[escaped].mean() < 0.2 * true_tau  # averaging only the escaped particles is badly biased
    none = np.zeros(50, dtype=bool)
    assert mean_escape_steps(np.full(50, horizon), none) == math.inf
    censored, _ = estimate_escape_time(np.full(50, horizon), none, resamples=20, rng=rng)
    assert censored.ci_low is None and censored.lower_bound_95 == pytest.approx(50 * horizon / 3, rel=0.01)


def test_exact_passage_time_tends_to_kramers_at_high_barrier():
    def ratio(barrier_over_t):
        temperature = 1e-3
        barrier = barrier_over_t * temperature
        exact = double_well_mfpt_steps(barrier, 10.0, temperature, 0.01)
        return exact / double_well_kramers_steps(barrier, 10.0, temperature, 0.01)

    assert ratio(40.0) == pytest.approx(1.0, abs=0.02)
    assert 1.05 < ratio(6.0) < 1.12  # the finite-barrier error the Kramers tolerance allows for
    coarse = double_well_mfpt_steps(0.006, 10.0, 1e-3, 0.01, points=100_001)
    assert coarse == pytest.approx(double_well_mfpt_steps(0.006, 10.0, 1e-3, 0.01), rel=1e-5)


def test_sgd_escape_rate_matches_kramers():
    """The reference setting lies inside Kramers' assumptions; 8,000 particles give about 800 escapes (3.5%
    standard error). Tolerances as stated in KramersCheckConfig: 20% against Kramers' formula (whose own
    finite-barrier error is 8% here) and 3 standard errors + 3% against the exact passage time."""
    check = KramersCheckConfig(particles=8000, max_steps=20_000)
    assert check.basin.barrier_over_temperature >= 5 and check.basin.lr_times_curvature <= 0.02
    result, passage = kramers_check(check, seed=0)
    assert result["simulated_escapes"] > 500
    assert abs(result["rate_vs_kramers"] - 1) <= check.tolerance, result
    assert result["passed"] and result["passed_exact"], result
    assert passage.steps.max() <= check.max_steps


def test_tiny_study_is_deterministic_for_a_seed():
    cfg = EscapeStudyConfig.tiny()
    first, again = (run_escape_study(cfg, log=lambda _: None) for _ in range(2))
    assert first.passages.keys() == again.passages.keys()
    for key, passage in first.passages.items():
        assert torch.equal(passage.steps, again.passages[key].steps)
        assert torch.equal(passage.escaped, again.passages[key].escaped)
    assert first.rows == again.rows and first.fits == again.fits
    other = run_escape_study(dataclasses.replace(cfg, seed=1), log=lambda _: None)
    assert not torch.equal(other.passages["d1/sgd"].steps, first.passages["d1/sgd"].steps)


def _load_cli():
    spec = importlib.util.spec_from_file_location("escape_run", ESCAPE_DIR / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_results_and_fills_readme_blocks(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Study\n\nhand-written\n\n<!-- escape-results:begin -->\nold\n<!-- escape-results:end -->\n"
                      "\nafter\n")
    out = tmp_path / "results"
    _load_cli().main(["--tiny", "--out", str(out), "--readme", str(readme)])
    for name in ("escape_times.png", "kramers_check.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["settings"]) == 2 * 3 * len(ESCAPE_OPTIMIZERS)
    assert "python experiments/escape/run.py --tiny" in summary["provenance"]["script"]
    raw = np.load(out / "first_passage_steps.npz")
    assert raw["d1_sgd_steps"].shape == (300,) and raw["kramers_escaped"].dtype == bool
    text = readme.read_text()
    assert "hand-written" in text and text.endswith("after\n") and "old" not in text
    assert "Kramers check" in text and (out / "reading.md").read_text().strip() in text


def test_bad_names_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"valid: \['adam', 'dualadam', 'invadam', 'sgd'\]"):
        escape_optimizer("sgdm")
    with pytest.raises(ValueError, match="valid"):
        barrier_direction("random", 3)
    with pytest.raises(ValueError, match="transverse_curvature"):
        DoubleWell.build([1.0], particles=2, barrier=1.0, batch_size=1.0, dim=3)
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    with pytest.raises(SystemExit, match="escape-results:begin"):
        _load_cli().fill_readmes([plain], {"escape-results": "x"})
