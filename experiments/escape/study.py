"""The escape study: mean escape time against basin sharpness for each optimizer, and the Kramers check.

Design. One reference basin (curvature ``h_ref``) fixes the units: ``h_ref = B`` makes the gradient-noise
standard deviation 1 there, so Adam's and InvAdam's preconditioner ``sqrt(v)`` is 1 at the reference and one
learning rate gives every optimizer SGD's temperature and mobility there (``matched_learning_rate``; DualAdam
uses Adam's). Around it the sweep varies the sharpness ``h = h_ref / flatness`` at a fixed barrier, so any
difference between optimizers comes from how their noise responds to sharpness, the claim under test.
The reference is placed by two dimensionless numbers, ``lr * h_ref`` (small: the diffusion limit) and
``barrier / T`` (large: Kramers' regime).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from landscape import BARRIER_DIRECTIONS, DoubleWell
from simulate import (
    ESCAPE_OPTIMIZERS,
    FirstPassage,
    escape_optimizer,
    simulate_escape,
)
from survival import estimate_escape_time, fit_log_escape_time
from theory import (
    double_well_kramers_steps,
    double_well_mfpt_steps,
    effective_temperature,
    matched_learning_rate,
    mobility,
)

from dualadam.optim import PAPER_SWITCH_RATE


@dataclass(frozen=True)
class ReferenceBasin:
    """The reference basin and SGD's learning rate, set by where they sit in the theory's assumptions."""

    batch_size: float = 128.0
    curvature: float = 128.0                # h_ref; equal to batch_size makes the noise std 1 there
    lr_times_curvature: float = 0.02        # lr * h_ref << 1: steps finely discretize the diffusion
    barrier_over_temperature: float = 5.0   # barrier / T_SGD at h_ref

    @property
    def lr(self) -> float:
        return self.lr_times_curvature / self.curvature

    @property
    def temperature(self) -> float:
        return effective_temperature(self.lr, self.curvature, self.batch_size)

    @property
    def barrier(self) -> float:
        return self.barrier_over_temperature * self.temperature

    def derived(self) -> dict[str, float]:
        return {"lr": self.lr, "temperature": self.temperature, "barrier": self.barrier}


@dataclass(frozen=True)
class KramersCheckConfig:
    """SGD in 1-D at a basin inside Kramers' assumptions, with enough particles to resolve a few percent."""

    basin: ReferenceBasin = ReferenceBasin(barrier_over_temperature=6.0)
    particles: int = 10_000
    max_steps: int = 100_000
    tolerance: float = 0.20                 # allowed |simulated rate / Kramers rate - 1|
    discretization_allowance: float = 0.03  # vs the exact passage time: allowed on top of 3 standard errors


@dataclass(frozen=True)
class EscapeStudyConfig:
    basin: ReferenceBasin = ReferenceBasin()
    flatness: tuple[float, ...] = (0.625, 0.75, 0.875, 1.0, 1.125, 1.25, 1.375, 1.5)  # h_ref / h
    particles: int = 1000                   # per setting
    max_steps: int = 50_000                 # censoring time
    dims: tuple[int, ...] = (1, 8)
    direction: str = "diagonal"             # barrier direction of the d > 1 landscapes
    optimizers: tuple[str, ...] = ("sgd", "adam", "invadam", "dualadam")
    switch_rate: float = PAPER_SWITCH_RATE  # DualAdam's: blends for 1 / switch_rate steps, then Adam
    seed: int = 0
    resamples: int = 1000                   # bootstrap resamples for every interval and band
    min_escapes_for_fit: int = 20           # a setting enters the line fit with at least this many escapes
    kramers: KramersCheckConfig = field(default_factory=KramersCheckConfig)

    @classmethod
    def tiny(cls) -> EscapeStudyConfig:
        """Every code path in seconds (a CI smoke test): its numbers are not evidence of anything."""
        basin = ReferenceBasin(lr_times_curvature=0.05, barrier_over_temperature=2.5)
        return cls(basin=basin, flatness=(0.8, 1.0, 1.25), particles=100, max_steps=1500, dims=(1, 3),
                   switch_rate=1e-3, resamples=50, min_escapes_for_fit=5,
                   kramers=KramersCheckConfig(basin=basin, particles=500, max_steps=1500))

    def validate(self) -> None:
        for name in self.optimizers:
            escape_optimizer(name)
        if self.direction not in BARRIER_DIRECTIONS:
            raise ValueError(f"Unknown barrier direction {self.direction!r}; valid: {sorted(BARRIER_DIRECTIONS)}")
        if min(self.flatness) <= 0 or min(self.dims) < 1 or self.particles < 1 or self.max_steps < 1:
            raise ValueError("flatness values, dims, particles and max_steps must all be positive; got "
                             f"{self.flatness}, {self.dims}, {self.particles}, {self.max_steps}")

    def curvatures(self) -> list[float]:
        return [self.basin.curvature / f for f in self.flatness]

    def learning_rate(self, optimizer: str) -> float:
        power = ESCAPE_OPTIMIZERS[optimizer].preconditioner_power
        return matched_learning_rate(self.basin.lr, self.basin.curvature, self.basin.batch_size, power)


def predicted_mean_steps(cfg: EscapeStudyConfig, optimizer: str, dim: int, curvature: float) -> float | None:
    """Diffusion theory's mean escape time (exact 1-D passage time at the optimizer's effective temperature),
    where the 1-D theory applies: stationary rules, and for the adaptive ones only when each coordinate's
    noise is the barrier's (d = 1 or an axis-aligned barrier)."""
    spec = ESCAPE_OPTIMIZERS[optimizer]
    applies = spec.stationary and (spec.preconditioner_power == 0 or dim == 1 or cfg.direction == "axis")
    if not applies:
        return None
    lr, batch = cfg.learning_rate(optimizer), cfg.basin.batch_size
    temperature = effective_temperature(lr, curvature, batch, spec.preconditioner_power)
    step_mobility = mobility(lr, curvature, batch, spec.preconditioner_power)
    return double_well_mfpt_steps(cfg.basin.barrier, curvature, temperature, step_mobility)


def run_sweep(cfg: EscapeStudyConfig, dim: int, optimizer: str) -> FirstPassage:
    """Every flatness setting of one (dimension, optimizer) as one tensor of particles."""
    well = DoubleWell.build(cfg.curvatures(), particles=cfg.particles, barrier=cfg.basin.barrier,
                            batch_size=cfg.basin.batch_size, dim=dim, direction=cfg.direction,
                            transverse_curvature=cfg.basin.curvature)
    return simulate_escape(well, optimizer, lr=cfg.learning_rate(optimizer), max_steps=cfg.max_steps,
                           seed=cfg.seed, switch_rate=cfg.switch_rate)


def summarize_sweep(cfg: EscapeStudyConfig, dim: int, optimizer: str, passage: FirstPassage,
                    rng: np.random.Generator) -> tuple[list[dict], dict]:
    """One row per flatness setting, and the line fit of ln(tau) against flatness over the well-measured ones."""
    steps = passage.steps.numpy().reshape(len(cfg.flatness), cfg.particles)
    escaped = passage.escaped.numpy().reshape(len(cfg.flatness), cfg.particles)
    rows, replicates = [], []
    for k, (flat, curvature) in enumerate(zip(cfg.flatness, cfg.curvatures())):
        estimate, boot = estimate_escape_time(steps[k], escaped[k], resamples=cfg.resamples, rng=rng)
        spec = ESCAPE_OPTIMIZERS[optimizer]
        temperature = effective_temperature(cfg.learning_rate(optimizer), curvature, cfg.basin.batch_size,
                                            spec.preconditioner_power)
        rows.append({"dim": dim, "optimizer": optimizer, "flatness": flat, "curvature": curvature,
                     "lr": cfg.learning_rate(optimizer), **estimate.as_dict(),
                     "used_in_fit": estimate.escapes >= cfg.min_escapes_for_fit,
                     "predicted_barrier_over_temperature": cfg.basin.barrier / temperature if spec.stationary else None,
                     "predicted_mean_steps": predicted_mean_steps(cfg, optimizer, dim, curvature)})
        replicates.append(boot)
    return rows, _fit(rows, np.stack(replicates, axis=1), dim, optimizer)


def _fit(rows: list[dict], replicates: np.ndarray, dim: int, optimizer: str) -> dict:
    used = np.array([row["used_in_fit"] for row in rows])
    fit = {"dim": dim, "optimizer": optimizer, "settings_used": int(used.sum())}
    if used.sum() < 3:
        return {**fit, "line": None, "reason": f"only {int(used.sum())} settings had enough escapes (need 3)"}
    x = np.array([row["flatness"] for row in rows])[used]
    line = fit_log_escape_time(x, np.array([row["mean_steps"] for row in rows])[used], replicates[:, used])
    predicted = [row["predicted_mean_steps"] for row in rows]
    predicted_slope = None
    if all(p is not None for p in predicted):
        predicted_slope = float(np.polyfit(x, np.log(np.array(predicted, dtype=float)[used]), 1)[0])
    return {**fit, "line": asdict(line), "predicted_slope": predicted_slope}


def kramers_check(check: KramersCheckConfig, *, seed: int) -> tuple[dict, FirstPassage]:
    """SGD's simulated escape time against Kramers' formula and the exact 1-D passage time."""
    basin = check.basin
    well = DoubleWell.build([basin.curvature], particles=check.particles, barrier=basin.barrier,
                            batch_size=basin.batch_size)
    passage = simulate_escape(well, "sgd", lr=basin.lr, max_steps=check.max_steps, seed=seed)
    rng = np.random.default_rng(seed)
    estimate, _ = estimate_escape_time(passage.steps.numpy(), passage.escaped.numpy(), resamples=200, rng=rng)
    if estimate.escapes == 0:
        raise RuntimeError("No particle escaped in the Kramers check; raise max_steps or particles")
    kramers = double_well_kramers_steps(basin.barrier, basin.curvature, basin.temperature, basin.lr)
    exact = double_well_mfpt_steps(basin.barrier, basin.curvature, basin.temperature, basin.lr)
    relative_stderr = 1 / math.sqrt(estimate.escapes)  # of the censored-exponential estimate
    rate_vs_kramers = kramers / estimate.mean_steps    # simulated rate / Kramers rate
    rate_vs_exact = exact / estimate.mean_steps
    exact_tolerance = 3 * relative_stderr + check.discretization_allowance
    result = {
        **asdict(basin), **basin.derived(), "particles": check.particles, "max_steps": check.max_steps,
        **{f"simulated_{k}": v for k, v in estimate.as_dict().items() if k not in ("particles",)},
        "relative_stderr": relative_stderr, "kramers_mean_steps": kramers, "exact_mean_steps": exact,
        "exact_over_kramers": exact / kramers,
        "rate_vs_kramers": rate_vs_kramers, "tolerance": check.tolerance,
        "passed": abs(rate_vs_kramers - 1) <= check.tolerance,
        "rate_vs_exact": rate_vs_exact, "exact_tolerance": exact_tolerance,
        "passed_exact": abs(rate_vs_exact - 1) <= exact_tolerance,
    }
    return result, passage


@dataclass
class EscapeStudyResult:
    config: dict
    derived: dict
    rows: list[dict]
    fits: list[dict]
    kramers: dict
    passages: dict[str, FirstPassage]          # "d1/sgd", ..., and "kramers": the raw survival data
    seconds: dict[str, float]


def run_escape_study(cfg: EscapeStudyConfig, *, log: Callable[[str], None] = print) -> EscapeStudyResult:
    """The Kramers check, then every (dimension, optimizer) sweep. Deterministic for a given ``cfg.seed``."""
    cfg.validate()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    kramers, kramers_passage = kramers_check(cfg.kramers, seed=cfg.seed)
    seconds["kramers"] = time.perf_counter() - start
    log(f"Kramers check: simulated rate / Kramers rate = {kramers['rate_vs_kramers']:.3f} "
        f"({'within' if kramers['passed'] else 'OUTSIDE'} +-{cfg.kramers.tolerance:.0%})")
    passages, rows, fits = {"kramers": kramers_passage}, [], []
    rng = np.random.default_rng(cfg.seed)
    for dim in cfg.dims:
        for optimizer in cfg.optimizers:
            start = time.perf_counter()
            passage = run_sweep(cfg, dim, optimizer)
            seconds[f"d{dim}/{optimizer}"] = time.perf_counter() - start
            passages[f"d{dim}/{optimizer}"] = passage
            sweep_rows, fit = summarize_sweep(cfg, dim, optimizer, passage, rng)
            rows += sweep_rows
            fits.append(fit)
            fractions = " ".join(f"{row['fraction_escaped']:.2f}" for row in sweep_rows)
            log(f"d={dim} {optimizer}: fraction escaped {fractions} in {seconds[f'd{dim}/{optimizer}']:.0f}s")
    derived = {**cfg.basin.derived(), "curvatures": cfg.curvatures(),
               "learning_rates": {name: cfg.learning_rate(name) for name in cfg.optimizers},
               "blend_steps": round(1 / cfg.switch_rate) if cfg.switch_rate > 0 else None}
    return EscapeStudyResult(asdict(cfg), derived, rows, fits, kramers, passages, seconds)
