"""Deterministic cost proxies of the fast paths (profiler counts, not timings; see scripts/bench_optim.py)."""

from __future__ import annotations

import pytest
import torch

from dualadam import DualAdam
from dualadam.optim.profiling import measure_step

BLEND, ADAM = 1e-3, 1.0  # switch_rate 1 hands over to Adam at the first step


def _optimizer(num_tensors: int, switch_rate: float, **kwargs) -> tuple[DualAdam, int]:
    torch.manual_seed(0)
    # 32 x 8 fp32 = 1 KiB per tensor: a size the allocator does not round up
    params = [torch.randn(32, 8, requires_grad=True) for _ in range(num_tensors)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = DualAdam(params, lr=1e-3, switch_rate=switch_rate, **kwargs)
    opt.step()  # state allocation and compilation happen here, not in the measured step
    return opt, sum(p.numel() * p.element_size() for p in params)


def _foreach_ops(cost) -> int:
    return sum(name.startswith("aten::_foreach") for name in cost.op_names)


@pytest.mark.parametrize("switch_rate,ops", [(BLEND, 8), (ADAM, 7)])
def test_foreach_issues_a_fixed_number_of_ops_whatever_the_tensor_count(switch_rate, ops):
    costs = []
    for n in (3, 30):
        opt, param_bytes = _optimizer(n, switch_rate, foreach=True)
        cost = measure_step(opt.step)
        costs.append(cost.op_names)
        assert _foreach_ops(cost) == ops
        # its only model-sized temporary is the denominator sqrt(v_hat) + eps (plus bookkeeping bytes)
        assert param_bytes <= cost.bytes_allocated < 1.05 * param_bytes
    assert costs[0] == costs[1], "bookkeeping (step count, alpha) must not grow with the tensor count"


@pytest.mark.parametrize("switch_rate", [BLEND, ADAM])
def test_fused_path_allocates_nothing(switch_rate):
    for n in (3, 30):
        opt, _ = _optimizer(n, switch_rate, fused=True)
        assert measure_step(opt.step).bytes_allocated == 0


def test_reference_path_costs_grow_with_tensor_count():
    """The authors' loop: a dozen ops and several model-sized temporaries per tensor (why we replace it)."""
    opt, param_bytes = _optimizer(30, BLEND, foreach=False)
    cost = measure_step(opt.step)
    assert cost.aten_ops >= 30 * 10 and cost.bytes_allocated >= 5 * param_bytes


def test_default_path_hands_over_to_torchs_fused_adamw_kernel():
    """After the hand-over the update is AdamW: one torch kernel, no temporaries (foreach=None, fused=None)."""
    opt, _ = _optimizer(30, ADAM)
    cost = measure_step(opt.step)
    assert "aten::_fused_adamw_" in cost.op_names and _foreach_ops(cost) == 0
    assert cost.bytes_allocated == 0


def test_default_path_blends_on_foreach():
    opt, _ = _optimizer(30, BLEND)
    assert _foreach_ops(measure_step(opt.step)) == 8


def test_foreach_maximize_keeps_one_param_sized_temporary_like_torch():
    opt, param_bytes = _optimizer(30, BLEND, foreach=True, maximize=True)
    cost = measure_step(opt.step)
    assert param_bytes <= cost.bytes_allocated < 1.05 * param_bytes
