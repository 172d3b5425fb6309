"""The verdict of a paired comparison, by the rules of ``docs/statistics.md``, and the line that states it.

A verdict is computed from the numbers only; the line quotes the numbers it rests on, so a reading in the
README can quote the line and never go beyond it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dualadam.reporting.statistics import Metric, PairedComparison

ALPHA = 0.05        # family-wise error rate of a table's comparisons (Holm), and the Wilcoxon check's level
MIN_PAIRS = 3       # below this no verdict but "no detectable difference": a t interval on 1 df is ±12.7 sd
BETTER, WORSE, NO_DIFFERENCE, NOT_COMPARED = "better", "worse", "no detectable difference", "not compared"


@dataclass(frozen=True)
class Verdict:
    word: str       # BETTER, WORSE, NO_DIFFERENCE or NOT_COMPARED
    reason: str     # why, when the numbers alone do not say it ("" otherwise)


def verdict(comparison: PairedComparison, metric: Metric, family_size: int) -> Verdict:
    """Better or worse only when the Holm-corrected paired t-test rejects at ``ALPHA`` (so the 95% CI excludes
    0 on that side), with at least ``MIN_PAIRS`` pairs, and the Wilcoxon test agrees wherever it can."""
    n = comparison.n_pairs
    if n == 0:
        return Verdict(NOT_COMPARED, "no seed was run by both")
    if n < MIN_PAIRS:
        return Verdict(NO_DIFFERENCE, f"too few pairs to test: {n}, at least {MIN_PAIRS} needed")
    if all(d == 0 for d in comparison.differences):
        return Verdict(NO_DIFFERENCE, "identical in every pair")
    if comparison.t_p is None:
        return Verdict(NO_DIFFERENCE, "every pair differs by the same amount, so the t-test is undefined")
    if comparison.holm_p >= ALPHA:
        if comparison.t_p < ALPHA:
            return Verdict(NO_DIFFERENCE, f"the 95% CI excludes 0, but not after Holm's correction over "
                                          f"{family_size} comparisons")
        return Verdict(NO_DIFFERENCE, "")
    can_reject = comparison.wilcoxon_min_p is not None and comparison.wilcoxon_min_p < ALPHA
    if can_reject and comparison.wilcoxon_p >= ALPHA:
        return Verdict(NO_DIFFERENCE, f"the t-test rejects but the Wilcoxon test does not "
                                      f"(p={format_p(comparison.wilcoxon_p)})")
    improves = (comparison.mean > 0) == metric.higher_is_better
    nonzero = sum(d != 0 for d in comparison.differences)   # the Wilcoxon test drops zero differences
    sample = f"{n} pairs" if nonzero == n else f"{nonzero} nonzero differences"
    reason = "" if can_reject else f"Wilcoxon cannot reach p<{ALPHA:g} with {sample}; the verdict rests on the t-test"
    return Verdict(BETTER if improves else WORSE, reason)


def format_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else format(p, ".2g")


def format_signed(value: float | None, number_format: str) -> str:
    """``+0.60`` / ``−1.10`` (a true minus sign, as in print), ``0.00`` unsigned; ``–`` for no value."""
    if value is None:
        return "–"
    text = format(value, "+" + number_format)
    return text[1:] if float(text[1:]) == 0 else text.replace("-", "−")


def format_ci(comparison: PairedComparison, metric: Metric) -> str:
    if comparison.low is None:
        return "–"
    return f"[{format_signed(comparison.low, metric.number_format)}, " \
           f"{format_signed(comparison.high, metric.number_format)}]"


def verdict_line(comparison: PairedComparison, metric: Metric, names: dict[str, str], family_size: int) -> str:
    """E.g. ``DualAdam vs Adam: no detectable difference (−0.23 pp, 95% CI [−1.10, +0.60], n=3 pairs,
    d_z=−0.41, Holm p=0.71; Wilcoxon p=0.75)``, plus the reason when the rules needed one."""
    found = verdict(comparison, metric, family_size)
    title = f"{names.get(comparison.candidate, comparison.candidate)} vs " \
            f"{names.get(comparison.baseline, comparison.baseline)}: {found.word}"
    if found.word == NOT_COMPARED:
        return f"{title} ({found.reason})"
    numbers = [f"{format_signed(comparison.mean, metric.number_format)} {metric.unit}"]
    if comparison.low is not None:
        numbers.append(f"95% CI {format_ci(comparison, metric)}")
    numbers.append(f"n={comparison.n_pairs} pair{'s' if comparison.n_pairs != 1 else ''}")
    if comparison.d_z is not None:
        numbers.append(f"d_z={format_signed(comparison.d_z, '.2f')}")
    if comparison.holm_p is not None:
        numbers.append(f"Holm p={format_p(comparison.holm_p)}")
    tail = f"; Wilcoxon p={format_p(comparison.wilcoxon_p)}" if comparison.wilcoxon_p is not None else ""
    return f"{title} ({', '.join(numbers)}{tail})" + (f": {found.reason}" if found.reason else "")
