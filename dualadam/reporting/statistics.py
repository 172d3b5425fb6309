"""Confidence intervals over seeds and seed-paired comparisons between optimizers (``docs/statistics.md``).

Seeds are shared across a study's optimizers (seed s draws the same initial weights and data order for each),
so two optimizers are compared seed by seed: the difference of a metric within each seed both ran, then a
paired t-test on those differences (with its 95% CI), the Wilcoxon signed-rank test as a non-parametric check,
Cohen's d_z, and Holm's correction over all the comparisons of one table. Every distribution comes from scipy.

One value per seed: a group (an optimizer at one setting) may hold two completed runs of the same seed with
different configs (a rerun with ``analysis.sharpness=true``, say; identical configs are already dropped as
duplicates by ``aggregate``). The statistics keep the run with the last ``run`` name, the rule ``aggregate``
uses for identical configs, and list the others, so no seed is ever averaged or paired twice.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as scipy_stats

from dualadam.reporting.aggregate import Group, StudyTable
from dualadam.reporting.run_records import is_finite_number
from dualadam.training.metrics import TEST_ACC

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Metric:
    """A ``runs.csv`` column compared between optimizers: its name in prose, the unit of a difference, and
    which direction is an improvement."""

    source: str
    name: str
    unit: str
    number_format: str = ".2f"
    higher_is_better: bool = True


HEADLINE = Metric(f"final/{TEST_ACC}", "final test accuracy", "pp")


@dataclass(frozen=True)
class ComparisonPlan:
    """Who is compared with whom in a table: every optimizer with ``reference``, and each of ``controlled``
    also with ``control``, the Adam run whose lr warmup matches DualAdam's blend length (the part of DualAdam's
    effect that any warmup would give)."""

    reference: str = "adam"
    control: str = "adam_matched_warmup"
    controlled: tuple[str, ...] = ("dualadam",)

    def pairs(self, optimizers: list[str]) -> list[tuple[str, str]]:
        """``(candidate, baseline)`` pairs among ``optimizers`` (in their order): vs the reference first."""
        pairs = [(o, self.reference) for o in optimizers if o != self.reference and self.reference in optimizers]
        if self.control in optimizers:
            pairs += [(o, self.control) for o in optimizers
                      if o in self.controlled and o != self.control and (o, self.control) not in pairs]
        return pairs


@dataclass
class SeedValues:
    """One value per seed of a group's completed runs (``values[seed]`` from run ``runs[seed]``)."""

    values: dict[int, float] = field(default_factory=dict)
    runs: dict[int, str] = field(default_factory=dict)
    dropped: list[tuple[int, str]] = field(default_factory=list)   # (seed, run) left out: a duplicate seed
    unseeded: list[str] = field(default_factory=list)              # runs with no seed recorded


def one_value_per_seed(rows: list[dict], source: str) -> SeedValues:
    """``source``'s value per seed among ``rows`` (completed runs of one group); of two or more runs of one
    seed, the one with the last ``run`` name is kept and the others are listed in ``dropped``."""
    result = SeedValues()
    for row in sorted(rows, key=lambda r: r["run"]):
        if not is_finite_number(row.get(source)):
            continue
        seed = row.get("seed")
        if seed is None:
            result.unseeded.append(row["run"])
            continue
        if seed in result.runs:
            result.dropped.append((seed, result.runs[seed]))
        result.values[seed], result.runs[seed] = float(row[source]), row["run"]
    result.values = dict(sorted(result.values.items()))
    return result


@dataclass(frozen=True)
class MeanCI:
    """A mean over ``n`` values and its Student-t confidence interval (``None`` below two values)."""

    mean: float
    low: float | None
    high: float | None
    n: int


def mean_ci(values: list[float], confidence: float = CONFIDENCE) -> MeanCI:
    """The mean and its t interval, ``mean ± t(n-1) * s / sqrt(n)``; values all equal give a zero-width one."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return MeanCI(mean, None, None, len(values))
    if statistics.stdev(values) == 0:
        return MeanCI(mean, mean, mean, len(values))
    interval = scipy_stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
    return MeanCI(mean, float(interval.low), float(interval.high), len(values))


def group_ci(group: Group, source: str) -> tuple[MeanCI | None, SeedValues]:
    """The CI of ``source`` over the group's seeds (one run each), and the per-seed values it used."""
    seeds = one_value_per_seed(group.averaged, source)
    return (mean_ci(list(seeds.values.values())) if seeds.values else None), seeds


@dataclass
class PairedComparison:
    """``candidate`` minus ``baseline`` over the seeds both ran. Tests are ``None`` when undefined: fewer than
    two pairs, or differences with no spread (the t statistic divides by it)."""

    candidate: str
    baseline: str
    seeds: list[int]
    differences: list[float]
    unpaired: dict[str, list[int]]               # optimizer -> its seeds the other did not run
    mean: float | None = None
    low: float | None = None
    high: float | None = None
    d_z: float | None = None                     # Cohen's d_z: mean difference / sample sd of the differences
    t_p: float | None = None                     # paired t-test, two-sided
    wilcoxon_p: float | None = None              # Wilcoxon signed-rank, two-sided (scipy's method="auto")
    wilcoxon_min_p: float | None = None          # the smallest p the Wilcoxon test can give with these pairs
    holm_p: float | None = None                  # t_p after Holm's correction over the table's comparisons

    @property
    def n_pairs(self) -> int:
        return len(self.seeds)


def _quiet(test, *args, **kwargs):
    """scipy's result, without the precision warnings it raises on nearly identical inputs (handled here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return test(*args, **kwargs)


def without_float_noise(differences: list[float], values: list[float]) -> list[float]:
    """``differences`` rounded to 12 significant digits of the values' magnitude. Differences that are equal
    in exact arithmetic (accuracies are multiples of 100/test size) come out of floats a few ulps apart, and
    a t statistic over a spread of 1e-15 would call them significant."""
    scale = max((abs(v) for v in values), default=0.0) or 1.0
    digits = 12 - math.ceil(math.log10(scale))
    return [round(d, digits) + 0.0 for d in differences]   # + 0.0 turns -0.0 into 0.0


def paired_comparison(candidate: str, candidate_values: dict[int, float], baseline: str,
                      baseline_values: dict[int, float], confidence: float = CONFIDENCE) -> PairedComparison:
    """Compare two optimizers' per-seed values over their common seeds (``holm_p`` is left to ``holm``)."""
    seeds = sorted(set(candidate_values) & set(baseline_values))
    a = [candidate_values[s] for s in seeds]
    b = [baseline_values[s] for s in seeds]
    differences = without_float_noise([x - y for x, y in zip(a, b)], a + b)
    unpaired = {candidate: sorted(set(candidate_values) - set(seeds)),
                baseline: sorted(set(baseline_values) - set(seeds))}
    result = PairedComparison(candidate, baseline, seeds, differences, unpaired)
    if not seeds:
        return result
    result.mean = statistics.fmean(differences)
    if len(seeds) < 2:
        return result
    if statistics.stdev(differences) > 0:
        # The paired t-test is the one-sample t-test of the differences (what ``ttest_rel`` computes).
        test = _quiet(scipy_stats.ttest_1samp, differences, 0.0)
        interval = test.confidence_interval(confidence)
        result.low, result.high, result.t_p = float(interval.low), float(interval.high), float(test.pvalue)
        result.d_z = result.mean / statistics.stdev(differences)
    nonzero = sum(d != 0 for d in differences)
    if nonzero:
        result.wilcoxon_p = float(_quiet(scipy_stats.wilcoxon, differences).pvalue)
        result.wilcoxon_min_p = wilcoxon_smallest_p(nonzero)   # zero differences drop out of the test
    return result


def wilcoxon_smallest_p(n: int) -> float:
    """The smallest two-sided p the Wilcoxon test can give with ``n`` nonzero differences: scipy's p for the
    most extreme data there are (all on one side, all ranks distinct); ``2 / 2**n`` for the exact test."""
    return float(_quiet(scipy_stats.wilcoxon, np.arange(1.0, n + 1)).pvalue)


def fewest_pairs_for_wilcoxon(alpha: float) -> int:
    """The fewest pairs with which the two-sided Wilcoxon test can give ``p < alpha`` at all."""
    n = 1
    while wilcoxon_smallest_p(n) >= alpha:
        n += 1
    return n


def holm_adjusted(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: the k-th smallest of m is multiplied by
    ``m - k + 1``, made non-decreasing along the sorted order, and capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def apply_holm(comparisons: list[PairedComparison]) -> None:
    """Set ``holm_p`` of every comparison with a t-test; the family is those comparisons."""
    tested = [c for c in comparisons if c.t_p is not None]
    for comparison, adjusted in zip(tested, holm_adjusted([c.t_p for c in tested])):
        comparison.holm_p = adjusted


@dataclass
class StudyComparisons:
    """A table's paired comparisons of one metric, each optimizer taken at its headline group."""

    metric: Metric
    plan: ComparisonPlan
    groups: dict[str, Group]                     # optimizer -> the group compared
    seeds: dict[str, SeedValues]                 # optimizer -> that group's values per seed
    comparisons: list[PairedComparison]

    @property
    def family_size(self) -> int:
        """How many comparisons Holm's correction ran over: those with a t-test."""
        return sum(c.t_p is not None for c in self.comparisons)


def compare_study(table: StudyTable, metric: Metric = HEADLINE, plan: ComparisonPlan | None = None
                  ) -> StudyComparisons:
    """Pair ``table``'s optimizers by seed as ``plan`` says, Holm-corrected together. An optimizer is taken at
    its headline group: its only setting, or its best one when the study varies more."""
    plan = plan or ComparisonPlan()
    groups = {g.optimizer: g for g in table.headline_groups()}
    seeds = {name: one_value_per_seed(group.averaged, metric.source) for name, group in groups.items()}
    comparisons = [paired_comparison(c, seeds[c].values, b, seeds[b].values)
                   for c, b in plan.pairs([name for name in groups if seeds[name].values])]
    apply_holm(comparisons)
    return StudyComparisons(metric, plan, groups, seeds, comparisons)
