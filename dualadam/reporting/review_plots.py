"""The figures a reviewer asks for beside the mean curves (``plots.py``):

- ``seeds.png``: each optimizer's final test accuracy per seed, the same seed joined across optimizers (the
  pairing the paired tests use), and the mean with its 95% t interval (from ``runs.csv``);
- ``schedules.png``: the lr and alpha (``optim/inverse_adam_rate``) per epoch, so the blend's end is visible
  (from ``epochs.csv``; an optimizer that records no alpha has no alpha line);
- ``sensitivity.png``: a compare study's tuning scores against each searched parameter (from its
  ``protocol.json``), the selected trial starred;
- ``steps_to_target.png``: each optimizer's first step at a validation (else test) target per seed, runs that
  never reached it drawn past the end of training (``targets.py``).

Rendered by Agg without pyplot, with the same byte-repeatable PNG metadata as ``plots.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from dualadam.reporting.aggregate import Group
from dualadam.reporting.plots import COLORS, PNG_METADATA, curve
from dualadam.reporting.render import format_setting_value, key_header, optimizer_name
from dualadam.reporting.run_records import is_finite_number
from dualadam.reporting.statistics import group_ci
from dualadam.reporting.targets import StepsToTarget, Target, evaluation_interval

SEEDS_PNG, SCHEDULES_PNG, SENSITIVITY_PNG = "seeds.png", "schedules.png", "sensitivity.png"
STEPS_TO_TARGET_PNG = "steps_to_target.png"
FINAL_TEST_ACC = "final/test/acc"
LR, ALPHA = "lr", "optim/inverse_adam_rate"
# The matched-warmup control's warmup is tuned over the same range as DualAdam's blend: one shared panel.
FRACTION_PANEL = "blend (DualAdam) / warmup (control) fraction of the run"
PANEL_OF_PARAM = {"lr": "lr", "blend_fraction": FRACTION_PANEL, "warmup_fraction": FRACTION_PANEL}


def _color(optimizer: str, index: int) -> str:
    return COLORS.get(optimizer, f"C{index % 10}")


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    return path


def _short_label(group: Group, grouping_keys: list[str]) -> str:
    settings = ", ".join(f"{key_header(k)} {format_setting_value(v)}" for k, v in zip(grouping_keys, group.values))
    return optimizer_name(group.optimizer) + (f"\n({settings})" if settings else "")


def plot_seeds(study: str, groups: list[Group], grouping_keys: list[str], path: Path) -> Path:
    """Final test accuracy: a dot per seed, a grey line joining each seed across optimizers, and the mean
    with its 95% CI (black bar; a single seed has no interval)."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    by_seed: dict[int, list[tuple[int, float]]] = {}
    for x, group in enumerate(groups):
        found, seeds = group_ci(group, FINAL_TEST_ACC)
        if found is None:
            continue
        for seed, value in sorted(seeds.values.items()):
            by_seed.setdefault(seed, []).append((x, value))
        ax.scatter([x] * len(seeds.values), list(seeds.values.values()), color=_color(group.optimizer, x),
                   s=18, zorder=3)
        low, high = (found.low, found.high) if found.low is not None else (found.mean, found.mean)
        ax.errorbar([x + 0.15], [found.mean], yerr=[[found.mean - low], [high - found.mean]], fmt="D",
                    color="black", ms=5, capsize=4, zorder=4)
    for _seed, points in sorted(by_seed.items()):
        if len(points) > 1:
            ax.plot(*zip(*points), color="0.6", lw=0.8, zorder=2)
    ax.set_xticks(range(len(groups)), [_short_label(g, grouping_keys) for g in groups], fontsize=8, rotation=20,
                  ha="right", rotation_mode="anchor")
    ax.set(ylabel="final test accuracy (%)")
    ax.set_title(f"{study}: one dot per seed (same seed joined); ◆ mean with 95% CI", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _schedule_panel(ax, groups: list[Group], epoch_rows: list[dict], metric: str, ylabel: str) -> None:
    for index, group in enumerate(groups):
        epochs, means, _ = curve(epoch_rows, [r["run"] for r in group.averaged], metric)
        if epochs:
            ax.plot(epochs, means, color=_color(group.optimizer, index), lw=1.5, marker=".",
                    label=optimizer_name(group.optimizer))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if not ax.get_lines():
        ax.text(0.5, 0.5, f"no run recorded {metric}", ha="center", va="center", transform=ax.transAxes)
    elif all(y > 0 for line in ax.get_lines() for y in line.get_ydata()):
        ax.set_yscale("log")


def plot_schedules(study: str, groups: list[Group], epoch_rows: list[dict], path: Path) -> Path:
    """The lr (log scale) and alpha at each epoch's last step, mean over the group's seeds."""
    fig = Figure(figsize=(6.4, 5.2))
    lr_ax, alpha_ax = fig.subplots(2, 1, sharex=True)
    _schedule_panel(lr_ax, groups, epoch_rows, LR, "lr")
    _schedule_panel(alpha_ax, groups, epoch_rows, ALPHA, "alpha (inverse-Adam rate)")
    alpha_ax.set_xlabel("epoch")
    alpha_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lr_ax.set_title(f"{study}: lr and alpha per epoch\n(value at each epoch's last step, mean over seeds)",
                    fontsize=9)
    if lr_ax.get_legend_handles_labels()[0]:
        lr_ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def _scored_trials(trials: list[dict]) -> list[dict]:
    return [t for t in trials if t.get("state") == "COMPLETE" and is_finite_number(t.get("score"))]


def _panels(record: dict) -> list[str]:
    """Panel titles in first-seen order, lr first."""
    panels = ["lr"]
    for trials in record["trials"].values():
        for trial in trials:
            for param in trial.get("params", {}):
                panel = PANEL_OF_PARAM.get(param, param)
                if panel not in panels:
                    panels.append(panel)
    return panels


def _panel_bounds(record: dict, panel: str) -> tuple[float, float] | None:
    """The searched range of the panel's parameters (all optimizers), so a trial shows where it fell in it."""
    ranges = [(space["low"], space["high"]) for spaces in record.get("search_spaces", {}).values()
              for param, space in spaces.items() if PANEL_OF_PARAM.get(param, param) == panel]
    return (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None


def _log_axis(ax, bounds: tuple[float, float] | None) -> None:
    """Log x with plain labels at each decade, or at 1, 2 and 5 per decade over a short range (where
    matplotlib's own minor labels overlap)."""
    ax.set_xscale("log")
    if bounds:
        ax.set_xlim(bounds[0] / 1.1, bounds[1] * 1.1)
    low, high = ax.get_xlim()
    wide = math.log10(high / low) > 1.5     # then decades only: 1, 2, 5 labels would overlap
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _check_record(record: dict, source: str) -> None:
    for key in ("study", "trials", "selections", "score"):
        if key not in record:
            raise ValueError(f"{source} has no '{key}': it is not a protocol.json written by "
                             "`python -m dualadam.compare`; pass that study's results/<study>/protocol.json")


def plot_sensitivity(record: dict, path: Path, source: str = "the protocol record") -> Path:
    """Each optimizer's tuning score against each searched parameter (log x over the searched range), its
    selection starred."""
    _check_record(record, source)
    panels = _panels(record)
    fig = Figure(figsize=(4.0 * len(panels), 4.0))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for index, (name, trials) in enumerate(record["trials"].items()):
        selected = record["selections"].get(name, {}).get("number")
        for trial in _scored_trials(trials):
            for param, value in trial["params"].items():
                ax = axes[panels.index(PANEL_OF_PARAM.get(param, param))]
                star = trial["number"] == selected
                ax.scatter([value], [trial["score"]], color=_color(name, index), marker="*" if star else "o",
                           s=110 if star else 22, edgecolors="black" if star else "none", zorder=3)
        axes[0].scatter([], [], color=_color(name, index), s=22, label=optimizer_name(name))
    score = record["score"]
    for ax, panel in zip(axes, panels):
        _log_axis(ax, _panel_bounds(record, panel))
        ax.set_xlabel(panel, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{score.get('metric')} at the {score.get('epoch', 'final')} epoch (tuning runs)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{record['study']}: tuning trials per optimizer (★ = selected trial)", fontsize=9)
    return _save(fig, path)


def draw_sensitivity(protocol_json_path: Path, out_png: Path) -> Path:
    """``sensitivity.png`` from a compare study's ``protocol.json``."""
    path = Path(protocol_json_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `python -m dualadam.compare` for the study first")
    return plot_sensitivity(json.loads(path.read_text()), Path(out_png), str(path))



def _last_step(epoch_rows: list[dict]) -> float:
    return max((r["optim/steps"] for r in epoch_rows if is_finite_number(r.get("optim/steps"))), default=1.0)


def plot_steps_to_target(study: str, found: list[StepsToTarget], target: Target, grouping_keys: list[str],
                         epoch_rows: list[dict], path: Path) -> Path:
    """One row per optimizer: a dot per seed at its first step at the target, the median as a black diamond,
    and a cross past the end of training for each run that never reached it; dotted lines at the evaluations
    (epoch ends), the only steps a run can be seen reaching the target at."""
    fig = Figure(figsize=(7.0, 0.5 * len(found) + 1.8))
    ax = fig.add_subplot()
    end = _last_step(epoch_rows)
    never_x = end * 1.08
    interval = evaluation_interval(epoch_rows)
    if interval:
        for step in range(interval, int(end) + 1, interval):
            ax.axvline(step, color="0.85", lw=0.8, ls=":", zorder=1)
    for y, item in enumerate(found):
        color = _color(item.group.optimizer, y)
        seeds = sorted(item.steps.items())
        reached = [(s, step) for s, step in seeds if step is not None]
        # Seeds at the same step are spread vertically, so each run stays visible.
        offsets = [0.1 * ((i % 5) - 2) for i in range(len(seeds))]
        ax.scatter([step for _, step in reached], [y + offsets[i] for i, (s, step) in enumerate(seeds)
                                                   if step is not None], color=color, s=22, zorder=3)
        missed = item.n - item.reached
        if missed:
            ax.scatter([never_x] * missed, [y + o for o, (_, step) in zip(offsets, seeds) if step is None],
                       marker="x", color=color, s=30, zorder=3)
        if item.median != math.inf and not math.isnan(item.median):
            ax.scatter([item.median], [y - 0.35], marker="D", color="black", s=22, zorder=4)
    ax.axvline(end, color="0.4", lw=0.8)
    ax.text(never_x, -0.8, "never", ha="center", va="bottom", fontsize=7)
    ax.set_yticks(range(len(found)), [_short_label(item.group, grouping_keys).replace("\n", " ")
                                      for item in found], fontsize=8)
    ax.set_ylim(len(found) - 0.5, -0.8)   # the first optimizer on top
    ax.set_xlim(0, end * 1.15)
    ax.set_xlabel("optimizer steps (evaluated at each epoch's end, dotted)")
    where = " (test set: no validation split)" if target.metric == "test/acc" else ""
    ax.set_title(f"{study}: steps to reach {target.metric} {target.relation} {target.value:.4g}{where}\n"
                 "● one run per seed, ◆ median over seeds, × never reached", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)
