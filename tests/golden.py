"""Replays the reference trajectories of the authors' DualAdam (see ``../shared/golden/README.md``).

The full file lives in ``../shared/golden/``; a plain clone has no ``../shared``, so a trimmed copy of a few of
its runs is committed as ``tests/data/golden_subset.json`` (``python -m tests.golden`` rewrites it from the full
file), and the tests replay whichever is there: exactness is checked everywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

GOLDEN_FILE = "dualadam_reference_trajectories.json"
SHARED_GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / GOLDEN_FILE
SUBSET_FILE = Path(__file__).resolve().parent / "data" / "golden_subset.json"
# (index in the full file, steps kept). The first must stay a switch_rate-0.01 run that goes past step 100:
# tests/test_optim.py reloads its checkpoint at the hand-over. Together: blend, hand-over and post-switch steps,
# weight decay, two param groups and a 0-d param (every run has one), in about 100 KB.
SUBSET = ((1, 102), (7, 50))


def golden_path() -> Path:
    """``DUALADAM_GOLDEN`` (which must exist), else the full ``../shared`` file, else the committed subset."""
    if "DUALADAM_GOLDEN" in os.environ:
        return Path(os.environ["DUALADAM_GOLDEN"])
    return SHARED_GOLDEN if SHARED_GOLDEN.exists() else SUBSET_FILE


def load_runs() -> list[dict]:
    path = golden_path()
    if not path.exists():
        pytest.fail(f"Golden trajectories not found at {path} (DUALADAM_GOLDEN): point it at the JSON file, or "
                    "unset it to use ../shared/golden or the committed tests/data subset", False)
    return json.loads(path.read_text())["runs"]


def trimmed(run: dict, steps: int) -> dict:
    """``run`` cut to its first ``steps`` steps: the noise they use and the recorded steps among them."""
    case = {**run["case"], "steps": steps, "record_at": [t for t in run["case"]["record_at"] if t <= steps]}
    return {**run, "case": case, "noise": run["noise"][:steps],
            "trajectory": {str(t): run["trajectory"][str(t)] for t in case["record_at"]}}


def golden_subset(full: dict) -> dict:
    runs = [trimmed(full["runs"][index], steps) for index, steps in SUBSET]
    return {"about": f"A trimmed subset of {GOLDEN_FILE} (tests/golden.py: SUBSET). " + full["about"],
            "runs": runs}


def tensor(values, shape) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(shape)


def replay(run: dict, make_optimizer, on_step=None) -> dict[int, list[torch.Tensor]]:
    """Run one golden case; returns {step: params after that step} for the recorded steps.

    ``on_step(t, optimizer, params)`` may return a replacement optimizer (used to test checkpoint reloads).
    """
    case, shapes = run["case"], run["shapes"]
    params = [tensor(p, s).requires_grad_() for p, s in zip(run["p0"], shapes)]
    c1 = [tensor(c, s) for c, s in zip(run["c1"], shapes)]
    c2 = [tensor(c, s) for c, s in zip(run["c2"], shapes)]
    groups = [{"params": params[:2], "lr": case["lr"]},
              {"params": params[2:], "lr": case["lr"] * case["lr2_factor"]}]
    opt = make_optimizer(groups, case)
    record = {}
    for t in range(1, case["steps"] + 1):
        with torch.no_grad():
            for i, p in enumerate(params):
                noise = tensor(run["noise"][t - 1][i], shapes[i])
                p.grad = 2 * c1[i] * p + 3 * c2[i] * torch.cos(3 * p) + noise
        opt.step()
        if t in case["record_at"]:
            record[t] = [p.detach().clone() for p in params]
        if on_step is not None:
            opt = on_step(t, opt, params) or opt
    return record


def max_relative_error(run: dict, record: dict[int, list[torch.Tensor]]) -> float:
    worst = 0.0
    for t in run["case"]["record_at"]:
        for got, want, shape in zip(record[t], run["trajectory"][str(t)], run["shapes"]):
            want = tensor(want, shape)
            err = ((got - want).abs() / want.abs().clamp_min(1e-300)).max() if want.numel() else torch.tensor(0.0)
            worst = max(worst, float(err))
    return worst


if __name__ == "__main__":
    from dualadam.atomic_files import atomic_write

    subset = json.dumps(golden_subset(json.loads(SHARED_GOLDEN.read_text()))) + "\n"
    atomic_write(SUBSET_FILE, lambda f: f.write(subset.encode()))
    print(f"wrote {SUBSET_FILE} ({SUBSET_FILE.stat().st_size / 1024:.0f} KiB)")
