"""What the escape study leaves behind: JSON, CSV, raw first passages, two PNGs and a generated reading.

Every number in the reading is formatted from the result object, never typed, and every comparison word
("smaller", "fastest") is decided from bootstrap intervals, so rerunning with another seed or setting
rewrites the prose with the numbers.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from study import EscapeStudyResult

from dualadam.atomic_files import atomic_write_json

LABELS = {"sgd": "SGD", "adam": "Adam", "invadam": "InvAdam", "dualadam": "DualAdam"}
COLORS = {"sgd": "tab:blue", "adam": "tab:orange", "invadam": "tab:green", "dualadam": "tab:red"}
CSV_COLUMNS = ("dim", "optimizer", "flatness", "curvature", "lr", "particles", "escapes", "fraction_escaped",
               "exposure", "mean_steps", "ci_low", "ci_high", "lower_bound_95", "used_in_fit",
               "predicted_barrier_over_temperature", "predicted_mean_steps")


def write_escape_results(result: EscapeStudyResult, out_dir: str | Path, *, provenance: dict | None = None) -> dict:
    """Write ``summary.json``, ``escape_times.csv``, ``first_passage_steps.npz``, ``escape_times.png``,
    ``kramers_check.png`` and ``reading.md`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"provenance": provenance or {}, "config": result.config, "derived": result.derived,
               "kramers_check": result.kramers, "fits": result.fits, "settings": result.rows,
               "seconds": result.seconds}
    paths = {"summary": out / "summary.json", "csv": out / "escape_times.csv",
             "raw": out / "first_passage_steps.npz", "plot": out / "escape_times.png",
             "kramers_plot": out / "kramers_check.png", "reading": out / "reading.md"}
    # inf and nan become null (an escape time without escapes is unbounded; the row's ``escapes`` says so)
    atomic_write_json(paths["summary"], summary)
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result.rows)
    raw = {}
    for key, passage in result.passages.items():
        name = key.replace("/", "_")
        raw[f"{name}_steps"] = passage.steps.numpy().astype(np.int32)
        raw[f"{name}_escaped"] = passage.escaped.numpy()
    np.savez_compressed(paths["raw"], **raw)
    plot_escape_times(result, paths["plot"])
    plot_kramers_check(result, paths["kramers_plot"])
    paths["reading"].write_text(render_reading(result, provenance or {}))
    return {k: str(v) for k, v in paths.items()}


# ---------------------------------------------------------------------------------------------------------
# plots


def plot_escape_times(result: EscapeStudyResult, path: Path) -> None:
    """ln(tau) against h_ref / h: points with bootstrap intervals, fitted lines with bootstrap bands, dashed
    diffusion-theory predictions, and open triangles at the 95% lower bound where nothing escaped."""
    dims = result.config["dims"]
    fig = Figure(figsize=(5.2 * len(dims), 4.4))
    axes = fig.subplots(1, len(dims), squeeze=False)[0]
    for ax, dim in zip(axes, dims):
        for optimizer in result.config["optimizers"]:
            _plot_optimizer(ax, result, dim, optimizer)
        direction = "" if dim == 1 else f", barrier along the {result.config['direction']}"
        ax.set(yscale="log", xlabel=f"h_ref / h   (flatness; h_ref = {result.config['basin']['curvature']:g})",
               ylabel="mean escape time (steps)", title=f"d = {dim}{direction}")
        ax.axhline(result.config["max_steps"], color="gray", lw=0.8, ls=":", label="max_steps (censoring)")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Escape from a basin of curvature h: solid = fit with 95% bootstrap band, dashed = theory",
                 fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _plot_optimizer(ax, result: EscapeStudyResult, dim: int, optimizer: str) -> None:
    rows = [r for r in result.rows if r["dim"] == dim and r["optimizer"] == optimizer]
    color, label = COLORS.get(optimizer), LABELS.get(optimizer, optimizer)
    measured = [r for r in rows if r["escapes"] > 0]
    x = np.array([r["flatness"] for r in measured])
    y = np.array([r["mean_steps"] for r in measured])
    err = np.array([[r["mean_steps"] - r["ci_low"], r["ci_high"] - r["mean_steps"]] for r in measured]).T
    filled = np.array([r["used_in_fit"] for r in measured], dtype=bool)
    if filled.any():
        ax.errorbar(x[filled], y[filled], yerr=err[:, filled], fmt="o", color=color, ms=4, capsize=2, label=label)
    if (~filled).any():
        ax.errorbar(x[~filled], y[~filled], yerr=err[:, ~filled], fmt="o", mfc="none", color=color, ms=4,
                    capsize=2)
    censored = [r for r in rows if r["escapes"] == 0]
    if censored:
        ax.plot([r["flatness"] for r in censored], [r["lower_bound_95"] for r in censored], "^", mfc="none",
                color=color, ms=6)
    fit = next(f for f in result.fits if f["dim"] == dim and f["optimizer"] == optimizer)
    if fit["line"] is not None:
        line = fit["line"]
        grid = np.array(line["grid"])
        ax.plot(grid, np.exp(line["intercept"] + line["slope"] * grid), color=color, lw=1.2)
        ax.fill_between(grid, np.exp(line["band_low"]), np.exp(line["band_high"]), color=color, alpha=0.2, lw=0)
    predicted = [(r["flatness"], r["predicted_mean_steps"]) for r in rows if r["predicted_mean_steps"]]
    if predicted:
        ax.plot(*zip(*predicted), ls="--", color=color, lw=0.9)


def plot_kramers_check(result: EscapeStudyResult, path: Path) -> None:
    """Fraction of SGD particles still in the basin against steps, with the exponential laws of the
    simulated, Kramers and exact escape times."""
    passage, check = result.passages["kramers"], result.kramers
    times = np.sort(passage.steps.numpy()[passage.escaped.numpy()])
    survival = 1.0 - np.arange(1, len(times) + 1) / check["particles"]
    grid = np.linspace(0, check["max_steps"], 200)
    fig = Figure(figsize=(5.5, 4))
    ax = fig.add_subplot()
    ax.step(times, survival, where="post", color="black", lw=1.2, label="simulated SGD particles")
    for key, label, style in (("simulated_mean_steps", "exp(-k / tau_sim)", ":"),
                              ("kramers_mean_steps", "Kramers exp(-k / tau_K)", "--"),
                              ("exact_mean_steps", "exact diffusion exp(-k / tau)", "-.")):
        ax.plot(grid, np.exp(-grid / check[key]), ls=style, lw=1, label=f"{label}, tau = {check[key]:.3g}")
    ax.set(yscale="log", xlabel="optimizer steps k", ylabel="fraction still in the basin",
           title=f"Kramers check: barrier/T = {check['barrier_over_temperature']:g}, "
                 f"lr*h = {check['lr_times_curvature']:g}, {check['particles']} particles")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")


# ---------------------------------------------------------------------------------------------------------
# the reading


def _sci(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3g}"


def _tau(row: dict) -> str:
    if row["escapes"] == 0:
        return f"> {_sci(row['lower_bound_95'])} (none escaped)"
    return f"{_sci(row['mean_steps'])} [{_sci(row['ci_low'])}, {_sci(row['ci_high'])}]"


def _interval_order(a: tuple[float, float], b: tuple[float, float]) -> str:
    """'smaller' / 'larger' when the 95% intervals do not overlap, else 'not distinguishable from'."""
    if a[1] < b[0]:
        return "smaller than"
    if a[0] > b[1]:
        return "larger than"
    return "not distinguishable from"


def _row(result: EscapeStudyResult, dim: int, optimizer: str, flatness: float) -> dict:
    return next(r for r in result.rows if r["dim"] == dim and r["optimizer"] == optimizer
                and r["flatness"] == flatness)


def _line(result: EscapeStudyResult, dim: int, optimizer: str) -> dict | None:
    fit = next((f for f in result.fits if f["dim"] == dim and f["optimizer"] == optimizer), None)
    return None if fit is None or fit["line"] is None else {**fit["line"], "predicted": fit["predicted_slope"]}


def _slope(line: dict | None) -> str:
    if line is None:
        return "no fit (too few settings with escapes)"
    low, high = line["slope_ci"]
    return f"{line['slope']:.2f} [{low:.2f}, {high:.2f}]"


def render_reading(result: EscapeStudyResult, provenance: dict) -> str:
    sections = [_header(result, provenance), _kramers_section(result), _slope_table(result)]
    sections += [_time_table(result, dim) for dim in result.config["dims"]]
    sections.append(_claims(result))
    return "\n\n".join(sections) + "\n"


def _header(result: EscapeStudyResult, provenance: dict) -> str:
    cfg, derived = result.config, result.derived
    basin = cfg["basin"]
    rates = ", ".join(f"{LABELS.get(k, k)} {v:.4g}" for k, v in derived["learning_rates"].items())
    made = f" by `{provenance['command']}`" if "command" in provenance else ""
    commit = f" at commit `{provenance['commit']}`" if "commit" in provenance else ""
    if provenance.get("uncommitted_changes"):
        commit += " with uncommitted changes"
    return (f"_Generated{made}{commit}; do not edit by hand._\n\n"
            f"Setting: batch size B = {basin['batch_size']:g}, reference curvature h_ref = {basin['curvature']:g}, "
            f"barrier = {_sci(derived['barrier'])} (= {basin['barrier_over_temperature']:g} T_SGD at h_ref), "
            f"learning rates {rates} (lr h_ref = {basin['lr_times_curvature']:g}), "
            f"flatness h_ref/h in {list(cfg['flatness'])}, {cfg['particles']} particles per setting, "
            f"censored at {cfg['max_steps']:,} steps, DualAdam switch_rate {cfg['switch_rate']:g} "
            f"(blend over the first {derived['blend_steps']:,} steps), seed {cfg['seed']}, "
            f"{cfg['resamples']} bootstrap resamples. Intervals are 95%.")


def _kramers_section(result: EscapeStudyResult) -> str:
    k = result.kramers
    verdict = "within" if k["passed"] else "OUTSIDE"
    verdict_exact = "within" if k["passed_exact"] else "OUTSIDE"
    return (f"### Kramers check (SGD, d = 1)\n\n"
            f"At barrier/T = {k['barrier_over_temperature']:g} and lr h = {k['lr_times_curvature']:g}, "
            f"{k['simulated_escapes']:,} of {k['particles']:,} particles escaped within {k['max_steps']:,} steps. "
            f"Simulated mean escape time {_sci(k['simulated_mean_steps'])} steps "
            f"[{_sci(k['simulated_ci_low'])}, {_sci(k['simulated_ci_high'])}]; Kramers "
            f"{_sci(k['kramers_mean_steps'])}; exact passage time of the same diffusion "
            f"{_sci(k['exact_mean_steps'])}.\n\n"
            f"| comparison | rate ratio (simulated / theory) | tolerance | verdict |\n| --- | --- | --- | --- |\n"
            f"| Kramers' formula | {k['rate_vs_kramers']:.3f} | +-{k['tolerance']:.0%} | {verdict} |\n"
            f"| exact 1-D passage time | {k['rate_vs_exact']:.3f} | +-{k['exact_tolerance']:.1%} "
            f"(3 standard errors + discretization allowance) | {verdict_exact} |\n\n"
            f"Kramers' formula is asymptotic in T/barrier: here the exact passage time exceeds it by "
            f"{k['exact_over_kramers'] - 1:.1%}, its finite-barrier error, which is why the tolerance against it "
            f"is the wider one.")


def _slope_table(result: EscapeStudyResult) -> str:
    dims = result.config["dims"]
    head = " | ".join(f"d = {d}: measured | d = {d}: theory" for d in dims)
    lines = [f"### Slope of ln(tau) against h_ref/h\n\n| optimizer | {head} |",
             "| --- |" + " --- | --- |" * len(dims)]
    for optimizer in result.config["optimizers"]:
        cells = []
        for dim in dims:
            line = _line(result, dim, optimizer)
            predicted = line["predicted"] if line else None
            cells += [_slope(line), "n/a" if predicted is None else f"{predicted:.2f}"]
        lines.append(f"| {LABELS.get(optimizer, optimizer)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\nTheory: the exact 1-D passage time at each optimizer's effective "
                               "temperature (see the method above); n/a where no stationary 1-D theory applies.")


def _time_table(result: EscapeStudyResult, dim: int) -> str:
    optimizers = result.config["optimizers"]
    lines = [f"### Mean escape time in steps, d = {dim} (fraction escaped)\n",
             "| h_ref/h | " + " | ".join(LABELS.get(o, o) for o in optimizers) + " |",
             "| --- |" + " --- |" * len(optimizers)]
    for flat in result.config["flatness"]:
        cells = [f"{_tau(r)} ({r['fraction_escaped']:.0%})" for r in
                 (_row(result, dim, o, flat) for o in optimizers)]
        lines.append(f"| {flat:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _claims(result: EscapeStudyResult) -> str:
    optimizers = set(result.config["optimizers"])
    if not {"sgd", "adam", "invadam"} <= optimizers:
        return "### Reading\n\nThe reading compares SGD, Adam and InvAdam; run all three to generate it."
    bullets = []
    for dim in result.config["dims"]:
        bullets += _dimension_reading(result, dim)
    return "### Reading\n\n" + "\n".join(f"- {b}" for b in bullets)


def _dimension_reading(result: EscapeStudyResult, dim: int) -> list[str]:
    where = "In 1-D" if dim == 1 else f"With the barrier along the {result.config['direction']} of d = {dim}"
    sgd, adam, inv = (_line(result, dim, o) for o in ("sgd", "adam", "invadam"))
    bullets = []
    if sgd is not None:
        inside = sgd["predicted"] is not None and sgd["slope_ci"][0] <= sgd["predicted"] <= sgd["slope_ci"][1]
        theory = "" if sgd["predicted"] is None else (
            f"; diffusion theory predicts {sgd['predicted']:.2f}, "
            f"{'inside' if inside else 'outside'} the interval")
        bullets.append(f"{where}, SGD's ln(tau) rises by {_slope(sgd)} per unit of h_ref/h{theory}.")
    if sgd is not None and adam is not None:
        order = _interval_order(tuple(adam["slope_ci"]), tuple(sgd["slope_ci"]))
        meaning = {"smaller than": "its escape is less sensitive to sharpness, as diffusion theory predicts",
                   "larger than": "its escape is more sensitive to sharpness, contrary to diffusion theory",
                   "not distinguishable from": "no difference in sensitivity is resolved"}[order]
        bullets.append(f"{where}, Adam's slope {_slope(adam)} is {order} SGD's: {meaning}.")
    if sgd is not None and inv is not None:
        order = _interval_order(tuple(inv["slope_ci"]), tuple(sgd["slope_ci"]))
        bullets.append(f"{where}, InvAdam's slope {_slope(inv)} is {order} SGD's.")
    if dim > 1 and 1 in result.config["dims"]:
        bullets.append(_rotation_reading(result, dim, where))
    bullets.append(_sharpest_reading(result, dim, where))
    bullets.append(_flattest_reading(result, dim, where))
    if "dualadam" in result.config["optimizers"]:
        bullets.append(_dualadam_reading(result, dim, where))
    return bullets


def _rotation_reading(result: EscapeStudyResult, dim: int, where: str) -> str:
    """Did the adaptive optimizers' slopes move toward SGD's when the barrier left the coordinate axes?"""
    sgd = _line(result, dim, "sgd")
    moves = {}
    for optimizer in ("adam", "invadam"):
        one_d, here = _line(result, 1, optimizer), _line(result, dim, optimizer)
        if sgd is None or one_d is None or here is None:
            return f"{where}, too few settings escaped to compare the slopes with d = 1."
        moves[optimizer] = (one_d["slope"], here["slope"])
    toward = all(abs(here - sgd["slope"]) < abs(one_d - sgd["slope"]) for one_d, here in moves.values())
    changes = " and ".join(f"{LABELS[o]}'s from {a:.2f} (d = 1) to {b:.2f}" for o, (a, b) in moves.items())
    if toward:
        return (f"{where}, the slopes moved toward SGD's ({sgd['slope']:.2f}): {changes}. Each coordinate's "
                "second moment now mixes the barrier's noise with the transverse noise, so a diagonal "
                "preconditioner no longer sees which direction is sharp; the 1-D predictions for Adam and "
                "InvAdam assume the sharp direction is a coordinate axis.")
    return f"{where}, the slopes did not all move toward SGD's ({sgd['slope']:.2f}): {changes}."


def _sharpest_reading(result: EscapeStudyResult, dim: int, where: str) -> str:
    flat = min(result.config["flatness"])
    rows = {o: _row(result, dim, o, flat) for o in result.config["optimizers"]}
    escaped = {o: r for o, r in rows.items() if r["escapes"] > 0}
    times = ", ".join(f"{LABELS.get(o, o)} {_tau(r)}" for o, r in rows.items())
    if not escaped:
        return f"{where}, nothing escaped the sharpest basin (h_ref/h = {flat:g}): {times}."
    fastest = min(escaped, key=lambda o: escaped[o]["mean_steps"])
    others = [r for o, r in rows.items() if o != fastest]
    clear = all(r["escapes"] == 0 or escaped[fastest]["ci_high"] < r["ci_low"] for r in others)
    verdict = "clearly fastest (intervals do not overlap)" if clear else "fastest, but not clearly (intervals overlap)"
    return (f"{where}, sharpest basin (h_ref/h = {flat:g}), mean escape times: {times}. "
            f"{LABELS.get(fastest, fastest)} leaves it {verdict}.")


def _flattest_reading(result: EscapeStudyResult, dim: int, where: str) -> str:
    flat = max(result.config["flatness"])
    fractions = ", ".join(f"{LABELS.get(o, o)} {_row(result, dim, o, flat)['fraction_escaped']:.1%}"
                          for o in result.config["optimizers"])
    return (f"{where}, flattest basin (h_ref/h = {flat:g}), fraction escaped within "
            f"{result.config['max_steps']:,} steps: {fractions}.")


def _dualadam_reading(result: EscapeStudyResult, dim: int, where: str) -> str:
    dual, adam, inv = (_line(result, dim, o) for o in ("dualadam", "adam", "invadam"))
    text = (f"{where}, DualAdam (InvAdam-weighted for its first {result.derived['blend_steps']:,} steps, then "
            f"Adam) has slope {_slope(dual)}")
    if dual is not None and adam is not None and inv is not None:
        low, high = sorted((adam["slope"], inv["slope"]))
        between = low <= dual["slope"] <= high
        text += (f", {'between' if between else 'outside the range of'} Adam's ({adam['slope']:.2f}) and "
                 f"InvAdam's ({inv['slope']:.2f}); its tau is a time average over a changing rule, not a "
                 "stationary escape time")
    return text + "."


def render_summary(result: EscapeStudyResult, provenance: dict) -> str:
    """The few numbers the top-level README quotes: the Kramers check and the 1-D and d-D slopes."""
    k = result.kramers
    made = f"`{provenance['command']}`" if "command" in provenance else "the escape study"
    lines = [f"_Generated by {made}; details in `experiments/escape/README.md`._", "",
             f"- Kramers check (SGD, barrier/T = {k['barrier_over_temperature']:g}): simulated / Kramers escape "
             f"rate = {k['rate_vs_kramers']:.3f} (tolerance +-{k['tolerance']:.0%}, "
             f"{'passed' if k['passed'] else 'FAILED'}); simulated / exact diffusion rate = "
             f"{k['rate_vs_exact']:.3f}."]
    for dim in result.config["dims"]:
        slopes = ", ".join(f"{LABELS.get(o, o)} {_slope(_line(result, dim, o))}" for o in result.config["optimizers"])
        lines.append(f"- Slope of ln(mean escape time) against h_ref/h, d = {dim}: {slopes}.")
    flat = min(result.config["flatness"])
    dim = result.config["dims"][0]
    times = ", ".join(f"{LABELS.get(o, o)} {_tau(_row(result, dim, o, flat))}" for o in result.config["optimizers"])
    lines.append(f"- Mean escape time (steps) from the sharpest basin (h = {1 / flat:g} h_ref), d = {dim}: {times}.")
    return "\n".join(lines)
