"""The statistics of ``make tables`` (dualadam/reporting/statistics.py) and the verdict rules (verdicts.py,
docs/statistics.md), on fixed inputs with known answers."""

from __future__ import annotations

import itertools
import json
import statistics as stdlib_statistics

import pytest
from scipy import stats as scipy_stats

from dualadam.reporting.aggregate import build_study_table
from dualadam.reporting.render import not_averaged_list, paired_comparisons_section
from dualadam.reporting.statistics import (
    HEADLINE,
    ComparisonPlan,
    Metric,
    apply_holm,
    compare_study,
    fewest_pairs_for_wilcoxon,
    holm_adjusted,
    mean_ci,
    one_value_per_seed,
    paired_comparison,
    wilcoxon_smallest_p,
)
from dualadam.reporting.verdicts import BETTER, NO_DIFFERENCE, NOT_COMPARED, WORSE, verdict, verdict_line

# Student (1908) / Cushny & Peebles: extra hours of sleep of 10 patients under two drugs (R's `sleep` data).
SLEEP_DRUG_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_DRUG_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
LOSS = Metric("final/test/loss", "final test loss", "nats", ".3f", higher_is_better=False)


def by_seed(values: list[float], first_seed: int = 0) -> dict[int, float]:
    return {first_seed + i: v for i, v in enumerate(values)}


def compared(candidate: list[float], baseline: list[float]):
    """A single comparison, Holm-corrected as a family of one."""
    comparison = paired_comparison("dualadam", by_seed(candidate), "adam", by_seed(baseline))
    apply_holm([comparison])
    return comparison


# ------------------------------------------------------------------------------------------ the numbers


def test_paired_t_test_gives_the_textbook_result_on_students_sleep_data():
    """R's ``t.test(extra ~ group, data = sleep, paired = TRUE)``: t = 4.0621, df = 9, p = 0.002833, mean
    difference 1.58, 95% CI [0.7001142, 2.4598858]; and scipy's own ``ttest_rel`` on the same pairs."""
    comparison = compared(SLEEP_DRUG_2, SLEEP_DRUG_1)
    assert comparison.n_pairs == 10
    assert comparison.mean == pytest.approx(1.58, abs=1e-12)
    assert comparison.t_p == pytest.approx(0.002833, abs=5e-7)
    assert (comparison.low, comparison.high) == pytest.approx((0.7001142, 2.4598858), abs=5e-8)
    scipy_result = scipy_stats.ttest_rel(SLEEP_DRUG_2, SLEEP_DRUG_1)
    assert comparison.t_p == pytest.approx(scipy_result.pvalue, rel=1e-9)
    assert (comparison.low, comparison.high) == pytest.approx(tuple(scipy_result.confidence_interval(0.95)),
                                                              rel=1e-9)
    # Cohen's d_z: the mean difference over the differences' sample sd (1.229995 in R), i.e. t / sqrt(n).
    assert comparison.d_z == pytest.approx(1.58 / 1.229995, abs=1e-6)
    assert comparison.d_z == pytest.approx(scipy_result.statistic / 10 ** 0.5, rel=1e-12)


def test_wilcoxon_check_is_scipys_and_says_how_small_its_p_can_get():
    candidate, baseline = [3.1, 2.0, 5.5, 4.25, 1.0, 6.0, 2.5], [2.0, 2.5, 3.0, 4.0, 0.5, 3.0, 1.0]
    comparison = compared(candidate, baseline)
    assert comparison.wilcoxon_p == scipy_stats.wilcoxon(candidate, baseline).pvalue
    # The exact two-sided test cannot go below 2 / 2**n: 3 pairs can never give p < 0.05; 6 are the fewest.
    assert [wilcoxon_smallest_p(n) for n in (3, 5, 6)] == [0.25, 0.0625, 0.03125]
    assert fewest_pairs_for_wilcoxon(0.05) == 6
    assert compared([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]).wilcoxon_min_p == 0.25


def test_mean_ci_is_the_student_t_interval_over_seeds():
    values = [59.6, 59.9, 59.75]
    found = mean_ci(values)
    # mean ± t(0.975, 2) * s / sqrt(3), with the tabulated t quantile 4.302653.
    half = 4.302653 * stdlib_statistics.stdev(values) / 3 ** 0.5
    assert found.n == 3 and found.mean == pytest.approx(59.75)
    assert (found.low, found.high) == pytest.approx((59.75 - half, 59.75 + half), abs=1e-5)
    interval = scipy_stats.t.interval(0.95, 2, loc=found.mean, scale=scipy_stats.sem(values))
    assert (found.low, found.high) == pytest.approx(interval, abs=1e-12)
    assert mean_ci([4.17, 4.17, 4.17]) == mean_ci([4.17, 4.17, 4.17]).__class__(4.17, 4.17, 4.17, 3)
    single = mean_ci([60.0])
    assert single.low is None and single.high is None and single.n == 1


def test_holm_gives_the_textbook_adjusted_p_values():
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") == c(0.03, 0.06, 0.06, 0.02)
    assert holm_adjusted([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjusted([0.5, 0.6]) == [1.0, 1.0]      # 2 * 0.5 capped at 1, and never below a smaller p's
    assert holm_adjusted([0.02]) == [0.02]                # a family of one is not corrected
    assert holm_adjusted([]) == []


@pytest.mark.parametrize("p_values", [[0.2, 0.001, 0.04, 0.04, 0.9, 0.012], [0.3, 0.01, 0.02, 0.5]])
def test_holm_keeps_the_order_of_the_p_values_and_stays_between_p_and_one(p_values):
    adjusted = holm_adjusted(p_values)
    for i, j in itertools.permutations(range(len(p_values)), 2):
        if p_values[i] <= p_values[j]:
            assert adjusted[i] <= adjusted[j]
    assert all(p <= a <= 1.0 for p, a in zip(p_values, adjusted))
    permutation = list(reversed(range(len(p_values))))
    assert holm_adjusted([p_values[k] for k in permutation]) == [adjusted[k] for k in permutation]


# ----------------------------------------------------------------------------------------- the verdicts


def test_a_ci_spanning_zero_is_no_detectable_difference():
    comparison = compared([60.5, 60.5, 63.0], [60.0, 61.0, 62.0])
    assert comparison.low < 0 < comparison.high
    assert verdict(comparison, HEADLINE, 1).word == NO_DIFFERENCE
    assert verdict_line(comparison, HEADLINE, {"dualadam": "DualAdam", "adam": "Adam"}, 1) == (
        "DualAdam vs Adam: no detectable difference (+0.33 pp, 95% CI [−1.56, +2.23], n=3 pairs, d_z=+0.44, "
        "Holm p=0.53; Wilcoxon p=0.75)")


def test_a_consistent_gain_is_better_and_a_consistent_loss_worse():
    baseline = [60.0, 61.0, 59.5, 60.2, 60.8, 59.9]
    gains = [1.1, 0.9, 1.3, 0.8, 1.2, 1.0]
    better = compared([b + g for b, g in zip(baseline, gains)], baseline)
    assert better.low > 0 and better.wilcoxon_p < 0.05
    assert verdict(better, HEADLINE, 1).word == BETTER
    worse = compared([b - g for b, g in zip(baseline, gains)], baseline)
    assert verdict(worse, HEADLINE, 1).word == WORSE
    # For a loss, lower is the improvement.
    assert verdict(worse, LOSS, 1).word == BETTER and verdict(better, LOSS, 1).word == WORSE


def test_with_fewer_than_six_pairs_the_verdict_says_it_rests_on_the_t_test():
    comparison = compared([70.0, 71.0, 70.5], [60.0, 61.2, 60.4])
    found = verdict(comparison, HEADLINE, 1)
    assert found.word == BETTER
    assert found.reason == "Wilcoxon cannot reach p<0.05 with 3 pairs; the verdict rests on the t-test"
    # Seven pairs, but two ties: the Wilcoxon test sees 5 differences and cannot reject either.
    tied = compared([70.0, 71.0, 70.5, 60.0, 61.0, 70.8, 71.2], [60.0, 61.2, 60.4, 60.0, 61.0, 60.1, 60.9])
    found = verdict(tied, HEADLINE, 1)
    assert found.word == BETTER and tied.wilcoxon_min_p == 0.0625
    assert found.reason == "Wilcoxon cannot reach p<0.05 with 5 nonzero differences; the verdict rests on the t-test"


def test_the_t_test_alone_is_not_enough_where_the_wilcoxon_test_could_agree_and_does_not():
    # Five gains and one small loss: the t-test rejects, the exact Wilcoxon test (p = 4/64) does not.
    comparison = compared([1.0, 1.1, 0.9, 1.05, 0.95, -0.1], [0.0] * 6)
    assert comparison.t_p < 0.05 and comparison.wilcoxon_p == pytest.approx(0.0625)
    found = verdict(comparison, HEADLINE, 1)
    assert found.word == NO_DIFFERENCE and "the Wilcoxon test does not" in found.reason


def test_a_difference_lost_to_the_holm_correction_is_no_detectable_difference():
    weak = paired_comparison("sgd", by_seed([58.0, 57.3, 58.7]), "adam", by_seed([60.0, 60.0, 60.0]))
    other = paired_comparison("adamw", by_seed([60.5, 59.5, 61.0]), "adam", by_seed([60.0, 60.0, 60.0]))
    apply_holm([weak, other])
    assert weak.high < 0 and weak.t_p < 0.05 <= weak.holm_p and weak.holm_p == pytest.approx(2 * weak.t_p)
    assert other.holm_p == other.t_p > weak.holm_p
    found = verdict(weak, HEADLINE, 2)
    assert found.word == NO_DIFFERENCE
    assert found.reason == "the 95% CI excludes 0, but not after Holm's correction over 2 comparisons"


def test_too_few_or_no_pairs_conclude_nothing():
    two = compared([70.0, 71.0], [60.0, 61.0])
    assert verdict(two, HEADLINE, 1) == verdict(two, HEADLINE, 1).__class__(
        NO_DIFFERENCE, "too few pairs to test: 2, at least 3 needed")
    none = paired_comparison("dualadam", {0: 1.0}, "adam", {1: 1.0})
    assert none.n_pairs == 0 and verdict(none, HEADLINE, 0).word == NOT_COMPARED
    identical = compared([4.17, 4.17, 4.17], [4.17, 4.17, 4.17])
    assert identical.t_p is None and verdict(identical, HEADLINE, 0).reason == "identical in every pair"
    shifted = compared([5.0, 6.0, 7.0], [4.0, 5.0, 6.0])   # the t statistic divides by the differences' sd
    assert shifted.t_p is None and verdict(shifted, HEADLINE, 0).word == NO_DIFFERENCE


def test_differences_equal_but_for_float_rounding_are_equal():
    """Exact-match accuracy on 96 problems: 52/96 - 48/96 and 56/96 - 52/96 are both 4/96, a few ulps apart in
    floats. A t-test over that "spread" would find p ~ 0; the comparison sees one difference, three times."""
    candidate, baseline = [100 * k / 96 for k in (52, 56, 60)], [100 * k / 96 for k in (48, 52, 56)]
    assert len({x - y for x, y in zip(candidate, baseline)}) > 1
    comparison = compared(candidate, baseline)
    assert len(set(comparison.differences)) == 1 and comparison.t_p is None
    assert verdict(comparison, HEADLINE, 0).word == NO_DIFFERENCE


# ------------------------------------------------------------------------------------- seeds and pairing


def run_row(optimizer: str, seed: int | None, acc: float, run: str | None = None, config_hash: str | None = None,
            status: str = "completed") -> dict:
    run = run or f"{optimizer}-seed{seed}"
    return {"study": "s", "optimizer": optimizer, "seed": seed, "status": status, "run": run,
            "config_hash": config_hash or run, "setting": json.dumps({"optimizer.lr": 0.01}),
            "final/test/acc": acc}


def test_pairs_use_only_the_seeds_both_optimizers_ran():
    comparison = paired_comparison("dualadam", {0: 61.0, 1: 60.0, 2: 62.5, 3: 59.0},
                                   "adam", {1: 59.0, 2: 61.0, 3: 58.2, 4: 70.0})
    assert comparison.seeds == [1, 2, 3] and comparison.unpaired == {"dualadam": [0], "adam": [4]}
    assert comparison.t_p == pytest.approx(scipy_stats.ttest_rel([60.0, 62.5, 59.0], [59.0, 61.0, 58.2]).pvalue,
                                           rel=1e-9)


def test_a_seed_run_twice_is_counted_once_in_the_ci_and_the_pairs():
    rows = [run_row("adam", s, 60.0 + s) for s in (0, 1, 2)] + [run_row("dualadam", s, 61.0 + s) for s in (0, 1, 2)]
    rows.append(run_row("dualadam", 1, 99.0, run="dualadam-seed1-rerun"))   # another config, same seed
    seeds = one_value_per_seed([r for r in rows if r["optimizer"] == "dualadam"], "final/test/acc")
    assert seeds.values == {0: 61.0, 1: 99.0, 2: 63.0} and seeds.dropped == [(1, "dualadam-seed1")]
    table = build_study_table("s", rows)
    found = compare_study(table)
    (comparison,) = found.comparisons
    assert comparison.n_pairs == 3 and comparison.differences == [1.0, 98.0 - 60.0, 1.0]
    # The table itself already sets the older run aside as a duplicate (one run per optimizer, setting and
    # seed), so it is listed once, with the runs not averaged, and the pairs' note has nothing to add.
    assert table.excluded == [(rows[4], "duplicate of dualadam-seed1-rerun")]
    assert "duplicate of dualadam-seed1-rerun" in not_averaged_list(table)
    assert "more than one completed run" not in paired_comparisons_section(found, table)


def test_a_run_without_a_seed_is_listed_not_paired():
    rows = [run_row("adam", s, 60.0 + s) for s in (0, 1, 2)] + [run_row("dualadam", s, 61.0 + s) for s in (0, 1, 2)]
    rows.append(run_row("dualadam", None, 50.0, run="wandb:e/p/x"))
    table = build_study_table("s", rows)
    found = compare_study(table)
    assert found.comparisons[0].n_pairs == 3 and found.seeds["dualadam"].unseeded == ["wandb:e/p/x"]
    assert "DualAdam: 1 run(s) with no seed recorded cannot be paired (`wandb:e/p/x`)" in \
        paired_comparisons_section(found, table)


def test_the_plan_compares_with_the_reference_and_dualadam_with_the_matched_warmup_control():
    optimizers = ["sgd", "adam", "adam_matched_warmup", "dualadam"]
    assert ComparisonPlan().pairs(optimizers) == [("sgd", "adam"), ("adam_matched_warmup", "adam"),
                                                  ("dualadam", "adam"), ("dualadam", "adam_matched_warmup")]
    assert ComparisonPlan(reference="sgd").pairs(["sgd", "adam", "dualadam"]) == [("adam", "sgd"), ("dualadam", "sgd")]
    assert ComparisonPlan().pairs(["adam_matched_warmup", "dualadam"]) == [("dualadam", "adam_matched_warmup")]


def test_one_table_is_one_holm_family():
    accuracies = {"adam": [60.1, 59.4, 60.8, 59.9, 60.3], "adamw": [60.6, 59.9, 61.0, 60.5, 60.4],
                  "adam_matched_warmup": [59.8, 59.6, 60.1, 59.2, 60.0], "dualadam": [60.2, 59.9, 60.4, 60.3, 60.1]}
    rows = [run_row(optimizer, s, acc) for optimizer, values in accuracies.items() for s, acc in enumerate(values)]
    found = compare_study(build_study_table("s", rows))
    assert [(c.candidate, c.baseline) for c in found.comparisons] == [
        ("adamw", "adam"), ("adam_matched_warmup", "adam"), ("dualadam", "adam"), ("dualadam", "adam_matched_warmup")]
    raw = [c.t_p for c in found.comparisons]
    assert [c.holm_p for c in found.comparisons] == holm_adjusted(raw)
    # A comparison without a t-test (here: the same shift in every seed) is left out of the family.
    rows += [run_row("sgd", s, acc - 2.0) for s, acc in enumerate(accuracies["adam"])]
    found = compare_study(build_study_table("s", rows))
    assert found.comparisons[0].candidate == "sgd" and found.comparisons[0].holm_p is None
    assert [c.holm_p for c in found.comparisons[1:]] == holm_adjusted(raw)
