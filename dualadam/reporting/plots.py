"""Per-epoch curves of a study: the mean over seeds per group, with a band of ± one sample std.

Figures are ``matplotlib.figure.Figure`` objects rendered by Agg (no pyplot, no GUI). The PNGs are byte-for-byte
repeatable: matplotlib's ``Software`` tag is removed, and Agg writes no date.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dualadam.reporting.aggregate import Group
from dualadam.reporting.render import format_setting_value, key_header, optimizer_name
from dualadam.reporting.run_records import is_finite_number
from dualadam.training.metrics import EPOCH, GAP_ACC, TEST_ACC

CURVES = {  # file name -> (metric, y label)
    "test_acc.png": (TEST_ACC, "test accuracy (%)"),
    "gap_acc.png": (GAP_ACC, "gap: train-eval minus test accuracy (pp)"),
}
COLORS = {"adam": "tab:blue", "adamw": "tab:cyan", "radam": "tab:purple", "nadam": "tab:pink",
          "dualadam": "tab:red", "invadam": "tab:orange", "adam_matched_warmup": "tab:green", "sgd": "tab:gray"}
PNG_METADATA = {"Software": None}   # no matplotlib version tag: the same curves give the same bytes


def curve(epoch_rows: list[dict], runs: list[str], metric: str) -> tuple[list[int], list[float], list[float]]:
    """Epochs every run in ``runs`` reached with a finite ``metric``, and the mean and sample std there
    (std 0 for a single run)."""
    per_run: dict[str, dict[int, float]] = {run: {} for run in runs}
    for row in epoch_rows:
        if row["run"] in per_run and is_finite_number(row.get(metric)):
            per_run[row["run"]][row[EPOCH]] = row[metric]
    common = sorted(set.intersection(*(set(v) for v in per_run.values()))) if per_run else []
    means, stds = [], []
    for epoch in common:
        values = [per_run[run][epoch] for run in runs]
        means.append(statistics.fmean(values))
        stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    return common, means, stds


def group_label(group: Group, grouping_keys: list[str]) -> str:
    settings = ", ".join(f"{key_header(k)} {format_setting_value(v)}" for k, v in zip(grouping_keys, group.values))
    label = optimizer_name(group.optimizer) + (f" ({settings})" if settings else "")
    return f"{label}, n={len(group.averaged)}"


def plot_metric(groups: list[Group], grouping_keys: list[str], epoch_rows: list[dict], metric: str,
                ylabel: str, title: str, path: Path) -> Path:
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for index, group in enumerate(groups):
        epochs, means, stds = curve(epoch_rows, [r["run"] for r in group.averaged], metric)
        if not epochs:
            continue
        color = COLORS.get(group.optimizer, f"C{index % 10}")
        ax.plot(epochs, means, color=color, lw=1.5, label=group_label(group, grouping_keys))
        ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=color, alpha=0.2, lw=0)
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    return path


def plot_study_curves(study: str, groups: list[Group], grouping_keys: list[str], epoch_rows: list[dict],
                      folder: Path, note: str = "") -> list[Path]:
    """``test_acc.png`` and ``gap_acc.png`` in ``folder``: one line and std band per group."""
    title = f"{study}: mean ± std over seeds" + (f"\n{note}" if note else "")
    return [plot_metric(groups, grouping_keys, epoch_rows, metric, ylabel, title, folder / name)
            for name, (metric, ylabel) in CURVES.items()]
