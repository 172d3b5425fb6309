"""Escape times from right-censored first passages, with bootstrap confidence intervals and line fits.

Escape over a high barrier is a Poisson process (Kramers): after a short relaxation into the basin, a
particle escapes at a constant rate ``r`` per step. The maximum-likelihood rate from censored data is then

    r = escapes / exposure,    exposure = sum over particles of min(first passage, max_steps),

so the mean escape time ``tau = 1 / r`` counts the particles still inside at ``max_steps`` for exactly the
time they were watched, instead of dropping them or pretending they escaped. With no escapes ``tau`` is only
bounded below: ``exposure / 3`` at 95% (the rule of three). For a rule that changes over time (DualAdam's
blend) ``1 / r`` is the time-averaged hazard over the run, not a stationary mean escape time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

RULE_OF_THREE = -math.log(0.05)  # P(no event | expected 3.0) = 0.05: the 95% upper bound on a Poisson mean


@dataclass(frozen=True)
class EscapeTime:
    """Mean escape time (steps) of one setting, and how well the data pin it down."""

    particles: int
    escapes: int
    exposure: int                      # particle-steps watched
    mean_steps: float                  # exposure / escapes; inf without escapes
    ci_low: float | None               # bootstrap percentile interval; None without escapes
    ci_high: float | None
    lower_bound_95: float              # exposure / 3: tau is above this at 95% when there are no escapes

    @property
    def fraction_escaped(self) -> float:
        return self.escapes / self.particles

    def as_dict(self) -> dict:
        return {**asdict(self), "fraction_escaped": self.fraction_escaped}


def mean_escape_steps(steps: np.ndarray, escaped: np.ndarray) -> float:
    """Censored-exponential maximum-likelihood mean escape time: exposure / escapes (inf with none)."""
    escapes = int(np.count_nonzero(escaped))
    return float(np.sum(steps)) / escapes if escapes else math.inf


def bootstrap_mean_escape_steps(steps: np.ndarray, escaped: np.ndarray, *, resamples: int,
                                rng: np.random.Generator) -> np.ndarray:
    """``resamples`` estimates of the mean escape time from particles drawn with replacement; inf where a
    resample holds no escape."""
    picks = rng.integers(0, len(steps), size=(resamples, len(steps)))
    escapes = np.count_nonzero(escaped[picks], axis=1)
    exposure = steps[picks].sum(axis=1, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(escapes > 0, exposure / np.maximum(escapes, 1), np.inf)


def estimate_escape_time(steps: np.ndarray, escaped: np.ndarray, *, resamples: int, rng: np.random.Generator,
                         level: float = 0.95) -> tuple[EscapeTime, np.ndarray]:
    """The estimate for one setting and its bootstrap replicates (kept for the line fits)."""
    replicates = bootstrap_mean_escape_steps(steps, escaped, resamples=resamples, rng=rng)
    escapes, exposure = int(np.count_nonzero(escaped)), int(np.sum(steps))
    low, high = (None, None)
    if escapes:
        tail = 100 * (1 - level) / 2
        low, high = (float(v) for v in np.percentile(replicates, [tail, 100 - tail]))
    estimate = EscapeTime(len(steps), escapes, exposure, mean_escape_steps(steps, escaped), low, high,
                          exposure / RULE_OF_THREE)
    return estimate, replicates


@dataclass(frozen=True)
class LineFit:
    """``ln(tau) = intercept + slope * x`` by least squares, with bootstrap intervals and a band on ``grid``."""

    x: list[float]
    intercept: float
    slope: float
    slope_ci: tuple[float, float]
    grid: list[float]
    band_low: list[float]
    band_high: list[float]
    replicates_used: int


def fit_log_escape_time(x: np.ndarray, mean_steps: np.ndarray, replicates: np.ndarray, *, level: float = 0.95,
                        grid_points: int = 50) -> LineFit:
    """Fit ``ln(mean_steps)`` against ``x``; ``replicates`` [resamples, len(x)] carry the bootstrap.

    Each bootstrap replicate (particles resampled within every setting) is refitted; the band holds the
    central ``level`` of the refitted lines at each grid point. Replicates with an infinite time (a resample
    without escapes) are dropped and counted in ``replicates_used``.
    """
    if len(x) < 2:
        raise ValueError(f"A line needs at least 2 settings with escapes, got {len(x)}")
    intercept, slope = _least_squares(x, np.log(mean_steps))
    finite = np.all(np.isfinite(replicates), axis=1)
    boot = np.array([_least_squares(x, np.log(row)) for row in replicates[finite]])
    grid = np.linspace(x.min(), x.max(), grid_points)
    lines = boot[:, :1] + boot[:, 1:] * grid
    tail = 100 * (1 - level) / 2
    slope_low, slope_high = np.percentile(boot[:, 1], [tail, 100 - tail])
    return LineFit(x.tolist(), float(intercept), float(slope), (float(slope_low), float(slope_high)),
                   grid.tolist(), np.percentile(lines, tail, axis=0).tolist(),
                   np.percentile(lines, 100 - tail, axis=0).tolist(), int(finite.sum()))


def _least_squares(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)
