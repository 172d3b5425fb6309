"""Replays the reference trajectories in ``../shared/golden/`` (see the README beside that file)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

GOLDEN_FILE = "dualadam_reference_trajectories.json"


def golden_path() -> Path:
    """``DUALADAM_GOLDEN`` or ``../shared/golden/`` next to the repository."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / GOLDEN_FILE
    return Path(os.environ.get("DUALADAM_GOLDEN", default))


def load_runs() -> list[dict]:
    path = golden_path()
    if not path.exists():
        pytest.fail(f"Golden trajectories not found at {path}; set DUALADAM_GOLDEN to the JSON file", False)
    return json.loads(path.read_text())["runs"]


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
