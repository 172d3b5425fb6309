"""DualAdam reproduces the authors' released optimizer to 1e-10 relative error, on every code path.

The runs come from ``../shared/golden`` when it is there, else from the subset committed in ``tests/data``.
"""

from __future__ import annotations

import json

import pytest

from dualadam import DualAdam
from tests.golden import SHARED_GOLDEN, SUBSET_FILE, golden_subset, load_runs, max_relative_error, replay

RUNS = load_runs()
# "default" runs foreach in the blend and torch's fused AdamW kernel after it; "per_parameter" bias-corrects
# by each parameter's own step count, the same as the global one when every parameter has a grad each step.
PATHS = {"foreach": dict(foreach=True), "reference": dict(foreach=False), "fused": dict(fused=True), "default": {},
         "per_parameter": dict(bias_correction="per_parameter")}


def make_dualadam(path_kwargs):
    def make(groups, case):
        return DualAdam(groups, lr=case["lr"], betas=tuple(case["betas"]), eps=case["eps"],
                        weight_decay=case["weight_decay"], switch_rate=case["switch_rate"], **path_kwargs)
    return make


def run_id(run):
    c = run["case"]
    return f"seed{c['seed']}-lr{c['lr']}-xi{c['switch_rate']}-wd{c['weight_decay']}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("run", RUNS, ids=run_id)
def test_reproduces_reference_trajectory(run, path):
    record = replay(run, make_dualadam(PATHS[path]))
    assert max_relative_error(run, record) <= 1e-10


@pytest.mark.parametrize("path", PATHS)
def test_golden_cases_cross_the_hand_over(path):
    """The recorded steps straddle 1/switch_rate, so the cut-off arithmetic is what is being checked."""
    for run in RUNS:
        c = run["case"]
        assert any(t * c["switch_rate"] > 1 - c["switch_rate"] for t in c["record_at"])


def test_committed_subset_crosses_the_hand_over_with_weight_decay_and_a_0d_param():
    """What a plain clone checks: blend, the hand-over step, plain Adam after it, weight decay, a 0-d param."""
    runs = json.loads(SUBSET_FILE.read_text())["runs"]
    assert SUBSET_FILE.stat().st_size < 200_000
    for run in runs:
        c = run["case"]
        blend_ends = next(t for t in range(1, c["steps"] + 1) if 1 - t * c["switch_rate"] < c["switch_rate"])
        assert {blend_ends - 1, blend_ends, blend_ends + 1} <= set(c["record_at"])
        assert max(c["record_at"]) == c["steps"] == len(run["noise"])
        assert [] in run["shapes"]
    assert any(run["case"]["weight_decay"] > 0 for run in runs)
    assert runs[0]["case"]["switch_rate"] == 0.01 and runs[0]["case"]["steps"] > 100, "tests/test_optim.py's run"


@pytest.mark.skipif(not SHARED_GOLDEN.exists(), reason=f"needs the full golden file, {SHARED_GOLDEN}")
def test_committed_subset_is_the_full_golden_file_trimmed():
    """Regenerate with ``python -m tests.golden`` if this fails."""
    full = json.loads(SHARED_GOLDEN.read_text())
    assert json.loads(SUBSET_FILE.read_text()) == golden_subset(full)
