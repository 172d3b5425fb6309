"""A ``StudyTable`` as Markdown and LaTeX: ``mean ± std`` cells, the 95% CI of the headline metric, the
grouping keys as columns, the runs that were not averaged listed under the table; and the paired comparisons
with their verdict lines."""

from __future__ import annotations

from collections import Counter

from dualadam.reporting.aggregate import Column, Group, Stat, StudyTable
from dualadam.reporting.statistics import (
    HEADLINE,
    MeanCI,
    StudyComparisons,
    fewest_pairs_for_wilcoxon,
    group_ci,
    wilcoxon_smallest_p,
)
from dualadam.reporting.verdicts import ALPHA, format_ci, format_p, format_signed, verdict, verdict_line

DISPLAY_NAMES = {
    "sgd": "SGD (momentum)", "adam": "Adam", "adamw": "AdamW", "radam": "RAdam", "nadam": "NAdam",
    "adam_matched_warmup": "Adam + matched warmup", "invadam": "InvAdam", "dualadam": "DualAdam",
}
KEY_HEADERS = {"optimizer.lr": "lr"}
NO_VALUE = "–"
CI_SOURCES = (HEADLINE.source,)   # the columns followed by the 95% CI of their mean


def optimizer_name(label: str) -> str:
    return DISPLAY_NAMES.get(label, label)


def key_header(key: str) -> str:
    return KEY_HEADERS.get(key, key)


def format_setting_value(value) -> str:
    if value is None:
        return NO_VALUE
    return format(value, "g") if isinstance(value, float) else str(value)


def format_stat(stat: Stat | None, column: Column, group_size: int, pm: str = " ± ") -> str:
    """``mean ± std``; the value alone for one run; ``(n=k)`` appended when fewer runs than the group has."""
    if stat is None:
        return NO_VALUE
    text = format(stat.mean, column.number_format)
    if stat.std is not None:
        text += f"{pm}{format(stat.std, column.number_format)}"
    return text if stat.n == group_size else f"{text} (n={stat.n})"


def format_mean_ci(found: MeanCI | None, column: Column, group_size: int) -> str:
    """``[low, high]`` of the mean over seeds (one run each); ``(n=k)`` when fewer seeds than runs."""
    if found is None or found.low is None:
        return NO_VALUE
    text = f"[{format(found.low, column.number_format)}, {format(found.high, column.number_format)}]"
    return text if found.n == group_size else f"{text} (n={found.n})"


def _headers(table: StudyTable, header_of, ci_header_of) -> list[str]:
    """Each column's header, and after each of the ``CI_SOURCES`` columns, its CI column's header."""
    headers = []
    for column in table.columns:
        headers.append(header_of(column))
        if column.source in CI_SOURCES:
            headers.append(ci_header_of(column))
    return headers


def _stat_cells(table: StudyTable, group: Group, stat_text, ci_text) -> list[str]:
    cells = []
    for column in table.columns:
        cells.append(stat_text(group.stats.get(column.source), column, len(group.averaged)))
        if column.source in CI_SOURCES:
            cells.append(ci_text(group_ci(group, column.source)[0], column, len(group.averaged)))
    return cells


def not_averaged_cell(group: Group) -> str:
    if not group.excluded:
        return "0"
    counts = Counter(reason.split(" of ")[0] for _, reason in group.excluded)
    return f"{len(group.excluded)} ({', '.join(f'{n} {why}' for why, n in sorted(counts.items()))})"


def _row_cells(table: StudyTable, group: Group) -> list[str]:
    return [optimizer_name(group.optimizer), *(format_setting_value(v) for v in group.values),
            str(len(group.averaged)), *_stat_cells(table, group, format_stat, format_mean_ci),
            not_averaged_cell(group)]


def markdown_table(table: StudyTable, groups: list[Group]) -> str:
    headers = ["optimizer", *(key_header(k) for k in table.grouping_keys), "n",
               *_headers(table, lambda c: c.header, lambda c: f"{c.header.removesuffix(' (%)')} 95% CI"),
               "not averaged"]
    align = ["---", *("---:" for _ in headers[1:])]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_row_cells(table, g)) + " |" for g in groups]
    return "\n".join(lines)


def group_description(group: Group, table: StudyTable) -> str:
    settings = [f"{key_header(k)} {format_setting_value(v)}" for k, v in zip(table.grouping_keys, group.values)]
    return ", ".join([optimizer_name(group.optimizer), *settings])


def run_description(row: dict, group: Group, table: StudyTable) -> str:
    return f"{group_description(group, table)}, seed {row.get('seed')}"


def not_averaged_list(table: StudyTable) -> str:
    """The runs left out of the means, one line each, with why and where they are."""
    excluded = table.excluded
    if not excluded:
        return f"All {len(table.rows)} runs are averaged; none failed, diverged or is incomplete."
    counts = Counter(reason.split(" of ")[0] for _, reason in excluded)
    summary = ", ".join(f"{n} {why}" for why, n in sorted(counts.items()))
    lines = [f"**Not averaged: {len(excluded)} of {len(table.rows)} runs** ({summary}):", ""]
    lines += [f"- {run_description(row, group, table)}: {reason} (`{row['run']}`)"
              for group in table.groups for row, reason in group.excluded]
    return "\n".join(lines)


def latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text


def latex_table(table: StudyTable, groups: list[Group], caption: str) -> str:
    """A booktabs ``tabular`` (with ``caption`` as a comment above it), ready for ``\\input``."""
    headers = ["Optimizer", *(latex_escape(key_header(k)) for k in table.grouping_keys), "$n$",
               *_headers(table, lambda c: c.latex_header, lambda c: r"95\% CI"), "Not averaged"]
    lines = [f"% {caption}", f"% Generated by `make tables` from results/{table.study}/runs.csv; do not edit.",
             r"\begin{tabular}{l" + "r" * (len(headers) - 1) + "}", r"\toprule",
             " & ".join(headers) + r" \\", r"\midrule"]
    for group in groups:
        cells = [latex_escape(optimizer_name(group.optimizer)),
                 *(latex_escape(format_setting_value(v)) for v in group.values), str(len(group.averaged)),
                 *_stat_cells(table, group, _latex_stat, _latex_ci),
                 latex_escape(not_averaged_cell(group))]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _latex_stat(stat: Stat | None, column: Column, group_size: int) -> str:
    text = format_stat(stat, column, group_size, pm=r" \pm ")
    return "--" if text == NO_VALUE else f"${text}$".replace(" (n=", r"\ (n=")


def _latex_ci(found: MeanCI | None, column: Column, group_size: int) -> str:
    text = format_mean_ci(found, column, group_size)
    return "--" if text == NO_VALUE else f"${text}$".replace(" (n=", r"\ (n=")


# ------------------------------------------------------------------------------------- paired comparisons


def _seeds_text(seeds: list[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in seeds)}"


def comparisons_intro(found: StudyComparisons, grouped: bool) -> str:
    plan, metric = found.plan, found.metric
    against = f"each optimizer minus {optimizer_name(plan.reference)}"
    controlled = [c.candidate for c in found.comparisons if c.baseline == plan.control]
    if controlled:
        against += f", and {' and '.join(optimizer_name(c) for c in controlled)} minus " \
                   f"{optimizer_name(plan.control)}"
    return (f"**Paired comparisons of the {metric.name}**: {against}, seed by seed over the seeds both ran "
            f"(differences in {metric.unit}). Paired t-test with its 95% CI, Cohen's d_z (mean difference / sd "
            f"of the differences), Holm's correction over the {found.family_size} tested comparisons of this "
            "table, and the Wilcoxon signed-rank test as a check; the verdicts follow the rules of "
            "`docs/statistics.md` in the dualadam repository."
            + (" Each optimizer at its best setting (the second table), chosen on the test set." if grouped else ""))


def comparisons_table(found: StudyComparisons) -> str:
    metric, unit = found.metric, found.metric.unit
    lines = [f"| comparison | pairs | difference ({unit}) | 95% CI ({unit}) | d_z | t-test p | Holm p "
             "| Wilcoxon p | verdict |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for c in found.comparisons:
        cells = [f"{optimizer_name(c.candidate)} vs {optimizer_name(c.baseline)}", str(c.n_pairs),
                 format_signed(c.mean, metric.number_format), format_ci(c, metric),
                 format_signed(c.d_z, ".2f"), format_p(c.t_p), format_p(c.holm_p), format_p(c.wilcoxon_p),
                 verdict(c, metric, found.family_size).word]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_notes(found: StudyComparisons, table: StudyTable) -> list[str]:
    """What the reader must know about the pairs: seeds used once, seeds without a partner, and what the
    Wilcoxon test cannot show with this few pairs."""
    notes = []
    for group in table.groups:
        seeds = group_ci(group, found.metric.source)[1]
        where = group_description(group, table)
        for seed, run in seeds.dropped:
            notes.append(f"{where}: seed {seed} has more than one completed run; the CI and the pairs use "
                         f"`{seeds.runs[seed]}` only, not `{run}` (the mean ± std above averages both).")
        if seeds.unseeded:
            notes.append(f"{where}: {len(seeds.unseeded)} run(s) with no seed recorded cannot be paired "
                         f"({', '.join(f'`{r}`' for r in seeds.unseeded)}).")
    for c in found.comparisons:
        for name, seeds in c.unpaired.items():
            if seeds:
                other = c.baseline if name == c.candidate else c.candidate
                notes.append(f"{optimizer_name(c.candidate)} vs {optimizer_name(c.baseline)}: "
                             f"{optimizer_name(name)}'s {_seeds_text(seeds)} has no {optimizer_name(other)} run "
                             "to pair with and is left out.")
    weak = [c for c in found.comparisons if c.wilcoxon_min_p is not None and c.wilcoxon_min_p >= ALPHA]
    if weak:
        most = max(sum(d != 0 for d in c.differences) for c in weak)
        which = "any comparison of this table" if len(weak) == len(found.comparisons) else \
            ", ".join(f"{optimizer_name(c.candidate)} vs {optimizer_name(c.baseline)}" for c in weak)
        notes.append(f"The Wilcoxon test cannot reject at p<{ALPHA:g} with fewer than "
                     f"{fewest_pairs_for_wilcoxon(ALPHA)} nonzero differences, whatever the data (with {most} "
                     f"its smallest p is {format_p(wilcoxon_smallest_p(most))}). So it cannot for {which}: "
                     "there, a verdict rests on the t-test alone.")
    return notes


def verdict_lines(found: StudyComparisons) -> str:
    """One Markdown bullet per comparison: its verdict and the numbers it rests on."""
    names = {c.candidate: optimizer_name(c.candidate) for c in found.comparisons}
    names |= {c.baseline: optimizer_name(c.baseline) for c in found.comparisons}
    return "\n".join(f"- {verdict_line(c, found.metric, names, found.family_size)}" for c in found.comparisons)


def paired_comparisons_section(found: StudyComparisons, table: StudyTable) -> str:
    """The comparisons as a table, one verdict line each, and the notes on the pairs."""
    if not found.comparisons:
        return (f"**Paired comparisons of the {found.metric.name}**: none. The study has no completed run of "
                f"the reference, {optimizer_name(found.plan.reference)}, with this metric (`make tables "
                "TABLES_ARGS=\"--reference <optimizer>\"` picks another), or no other optimizer.")
    intro = comparisons_intro(found, bool(table.grouping_keys))
    parts = [intro, comparisons_table(found), verdict_lines(found)]
    notes = comparison_notes(found, table)
    if notes:
        parts += ["Notes on the pairs:", "\n".join(f"- {note}" for note in notes)]
    return "\n\n".join(parts)
