"""What a run says while it runs: one line per epoch, its final and best rows at the end, and, at the end of a
multirun, one line per job. These lines go to ``train.log`` and the console (Hydra's job logging), so SLURM
and ``nohup`` users see the metrics without a progress bar or the tables.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from dualadam.training import metrics as M

SPLITS = ("train", "val", "test")   # the splits a line shows, when the row has them (val: a held-out split)


def _number(value, spec: str) -> str:
    return "nan" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def describe_row(row: dict[str, Any], epochs: int | None = None) -> str:
    """``epoch 2/3 | train loss 1.234 acc 56.2% | test loss 1.301 acc 52.0% | gap 4.2 pp | lr 1.00e-02 |
    alpha 0.9987 | 3.1 s``. ``None`` values (non-finite ones, as summary.json stores them) read ``nan``."""
    epoch = f"epoch {row[M.EPOCH]}" + (f"/{epochs}" if epochs else "")
    parts = [epoch]
    for split in SPLITS:
        if f"{split}/loss" in row:
            parts.append(f"{split} loss {_number(row[f'{split}/loss'], '.4f')} "
                         f"acc {_number(row.get(f'{split}/acc'), '.2f')}%")
    if M.GAP_ACC in row:
        parts.append(f"gap {_number(row[M.GAP_ACC], '.2f')} pp")
    parts.append(f"lr {_number(row.get(M.LR), '.2e')}")
    parts.append(f"alpha {_number(row.get(M.INVERSE_ADAM_RATE), '.4f')}")
    seconds = (row.get(M.EPOCH_TIME) or 0.0) + (row.get(M.EVAL_TIME) or 0.0)
    parts.append(f"{seconds:.1f} s")
    return " | ".join(parts)


def describe_ending(summary: dict) -> list[str]:
    """The lines a run prints when it ends: its status, final and best rows, and its folder."""
    lines = [f"run {summary['status']} after {summary['epochs_completed']}/{summary['epochs']} epochs"]
    if summary.get("diverged"):
        lines[0] += f" ({summary['diverged']})"
    if summary.get("final"):
        lines.append(f"final: {describe_row(summary['final'], summary['epochs'])}")
    if summary.get("best"):
        lines.append(f"best by {summary['monitor']}: {describe_row(summary['best'], summary['epochs'])}")
    lines.append(f"outputs in {summary['run_dir']}")
    return lines


def describe_job(run_dir: Path, monitor_default: str = M.TEST_ACC) -> str:
    """One line of the multirun table: status, epochs, final monitor value and the run folder's name."""
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return f"{'no summary':<12} {'':>7} {'':>14}  {Path(run_dir).name}"
    monitor = summary.get("monitor") or monitor_default
    final = (summary.get("final") or {}).get(monitor)
    epochs = f"{summary.get('epochs_completed')}/{summary.get('epochs')}"
    value = f"{monitor} {_number(final, '.4g')}" if final is not None else ""
    return f"{summary.get('status', '?'):<12} {epochs:>7} {value:>14}  {Path(run_dir).name}"


JOBS_FILE_VARIABLE = "DUALADAM_MULTIRUN_JOBS"   # the file each job of this multirun appends its run folder to


class MultirunReport(Callback):
    """A Hydra callback (``hydra.callbacks`` in ``configs/train.yaml``): at the end of a multirun, a table of
    its jobs and their statuses, read from each job's ``summary.json``.

    Jobs may run in other processes (submitit), so each job appends its run folder to a file named by an
    environment variable the launching process sets (inherited by local and SLURM jobs alike)."""

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs = sweep_dir / f".multirun-{os.getpid()}-{os.urandom(4).hex()}.jobs"
        jobs.write_text("")
        os.environ[JOBS_FILE_VARIABLE] = str(jobs.resolve())

    def on_job_end(self, config, job_return, **kwargs: Any) -> None:
        jobs = os.environ.get(JOBS_FILE_VARIABLE)
        if jobs and Path(jobs).is_file():
            with open(jobs, "a") as file:   # one short line per append: whole even from parallel jobs
                file.write(str(Path(config.hydra.runtime.output_dir).resolve()) + "\n")

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        jobs = os.environ.pop(JOBS_FILE_VARIABLE, None)
        if not jobs or not Path(jobs).is_file():
            return
        run_dirs = list(dict.fromkeys(Path(jobs).read_text().split()))
        Path(jobs).unlink(missing_ok=True)
        lines = [f"[dualadam] multirun: {len(run_dirs)} jobs in {config.hydra.sweep.dir}",
                 f"{'status':<12} {'epochs':>7} {'final':>14}  run"]
        print("\n".join(lines + [describe_job(run_dir) for run_dir in run_dirs]), flush=True)
