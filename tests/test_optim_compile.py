"""DualAdam under torch.compile: a compiled ``opt.step()`` and the fused path's own compiled blend.

Graphs are counted deterministically with dynamo's ``unique_graphs`` counter. A step the caller compiles
uses the aot_eager backend, which functionalizes like inductor does but generates no code.
"""

from __future__ import annotations

import warnings
import weakref

import pytest
import torch
from torch._dynamo.utils import counters

from dualadam import DualAdam
from tests.test_golden import PATHS

SWITCH_RATE = 0.25  # alpha reaches 0 at step 4 of 8: both phases run


def _problem(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(3, 2, generator=g, dtype=dtype), torch.randn(4, generator=g, dtype=dtype)]
    grads = [[torch.randn(p.shape, generator=g, dtype=dtype) for p in params] for _ in range(8)]
    return params, grads


def _run(path_kwargs, compiled: bool, hyper_at=None, **kwargs):
    """8 steps across the hand-over; ``hyper_at(t, group)`` may change hyperparameters before step t."""
    start, grads = _problem()
    params = [p.clone().requires_grad_() for p in start]
    kwargs.setdefault("lr", 1e-2)
    opt = DualAdam(params, weight_decay=0.1, switch_rate=SWITCH_RATE, **kwargs, **path_kwargs)

    def step():
        opt.step()

    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    run_step = torch.compile(step, backend="aot_eager") if compiled else step
    for t in range(8):
        for p, g in zip(params, grads[t]):
            p.grad = g.clone()
        if hyper_at is not None:
            hyper_at(t, opt.param_groups[0])
        run_step()
    return [p.detach() for p in params], counters["stats"]["unique_graphs"] - before, opt


@pytest.mark.parametrize("path", PATHS)
def test_compiled_step_takes_one_graph_across_the_hand_over_and_matches_eager(path):
    """Every path traces the same branch-free update, so all are held to the eager reference path."""
    eager, _, _ = _run(PATHS["reference"], compiled=False)
    compiled, graphs, opt = _run(PATHS[path], compiled=True)
    assert opt.global_step == 8 and float(opt.param_groups[0]["inverse_adam_rate"]) == 0.0
    assert graphs == 1
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _cycle_float_hyperparameters(t, group):
    """What OneCycleLR with cycle_momentum does every step, plus eps."""
    group["lr"] = 1e-2 * (1 + t)
    group["betas"] = (0.95 - 0.01 * t, group["betas"][1])
    group["eps"] = 1e-8 * (1 + t)


@pytest.mark.parametrize("path", PATHS)
def test_changing_float_lr_betas_eps_every_step_costs_at_most_one_more_graph(path):
    """dynamo compiles the first call with the floats as constants; on the first change it makes them
    graph inputs (automatic dynamic), after which no change recompiles. So <= 2 graphs in all."""
    eager, _, _ = _run(PATHS["reference"], compiled=False, hyper_at=_cycle_float_hyperparameters)
    compiled, graphs, _ = _run(PATHS[path], compiled=True, hyper_at=_cycle_float_hyperparameters)
    assert graphs <= 2
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_tensor_lr_and_betas_changed_in_place_recompile_nothing():
    def fill(t, group):
        group["lr"].fill_(1e-2 * (1 + t))
        group["betas"][0].fill_(0.95 - 0.01 * t)

    hyper = dict(lr=torch.tensor(1e-2, dtype=torch.float64),
                 betas=(torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.999, dtype=torch.float64)))
    compiled, graphs, _ = _run({}, compiled=True, hyper_at=fill, **hyper)
    assert graphs == 1
    hyper = dict(lr=torch.tensor(1e-2, dtype=torch.float64),
                 betas=(torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.999, dtype=torch.float64)))
    eager, _, _ = _run({}, compiled=False, hyper_at=fill, **hyper)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_compiled_step_with_per_parameter_bias_correction_matches_eager():
    eager, _, _ = _run({}, compiled=False, bias_correction="per_parameter")
    compiled, graphs, _ = _run({}, compiled=True, bias_correction="per_parameter")
    assert graphs == 1
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_fused_blend_compiles_one_graph_whatever_the_groups_shapes_and_layouts():
    """9 groups of different shapes and ranks, one channels_last and one 1-element param: one graph, and the
    same trajectory as the foreach path."""
    shapes = [(3, 5), (7,), (2, 3, 4), (16, 8), (5, 5, 1), (9,), (4, 4, 4), (33,), (6, 2, 1, 1)]

    def run(**kwargs):
        g = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
        params.append(torch.randn(2, 3, 4, 5, generator=g).to(memory_format=torch.channels_last).requires_grad_())
        params.append(torch.randn(1, generator=g).requires_grad_())
        opt = DualAdam([{"params": [p], "weight_decay": 0.01 * i} for i, p in enumerate(params)], lr=1e-2,
                       switch_rate=0.01, **kwargs)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(memory_format=torch.channels_last) \
                    if p.dim() == 4 and p.shape[0] == 2 else torch.randn(p.shape, generator=g)
            opt.step()
        return params

    before = counters["stats"]["unique_graphs"]
    fused = run(fused=True)
    assert counters["stats"]["unique_graphs"] - before <= 1
    for a, b in zip(fused, run(foreach=True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_blend_follows_a_param_whose_data_is_replaced():
    """The fused path caches 1-D aliases of each param's memory; ``p.data = ...`` must not leave it updating
    the old memory."""
    def run(**kwargs):
        g = torch.Generator().manual_seed(1)
        params = [torch.randn(4, 3, generator=g).requires_grad_(), torch.randn(5, generator=g).requires_grad_()]
        opt = DualAdam(params, lr=1e-2, switch_rate=0.01, **kwargs)
        for t in range(4):
            if t == 2:
                params[0].data = torch.randn(4, 3, generator=g)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        return params

    for a, b in zip(run(fused=True), run(foreach=True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture
def compiled_calls(monkeypatch) -> list[str]:
    """A fresh compiled blend for the test, and a record of its calls by kind: ``DirectCompiled`` (a chunk's
    first call, or one no plan binds) or ``BoundCall`` (a bound chunk's)."""
    from dualadam.optim import direct_compile, fused_blend

    monkeypatch.setattr(fused_blend, "_compiled_blend_step", None)
    monkeypatch.setattr(fused_blend, "_compile_failed", False)
    calls = []
    for cls in (direct_compile.DirectCompiled, direct_compile.BoundCall):
        monkeypatch.setattr(cls, "__call__", lambda self, *a, _call=cls.__call__, _kind=cls.__name__, **k: (
            calls.append(_kind), _call(self, *a, **k)))
    return calls


def _fused_matches_foreach(run) -> None:
    """``run(fused_run, **path_kwargs)`` returns the params after its steps. The fused run must not fall back
    to the foreach path (its warning is made an error) and must end where the foreach run ends."""
    from dualadam.optim import fused_blend

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fused = run(True, fused=True)
    assert not fused_blend._compile_failed
    for a, b in zip(fused, run(False, foreach=True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_blend_calls_its_compiled_code_without_dynamo_after_the_first_step(compiled_calls, monkeypatch):
    """After the first step the compiled chunk kernel is called directly (``direct_compile.py``): with dynamo's
    entry point made to fail, later steps still run, and match the foreach path."""
    from dualadam.optim import fused_blend

    def forbid_dynamo():
        compiled = fused_blend._get_compiled_blend_step()
        signature = ((False,), torch.device("cpu"), torch.float32)
        assert compiled.directly_callable(signature)

        def through_dynamo(*args, **kwargs):
            raise AssertionError("the fused blend went through dynamo after its first step")
        monkeypatch.setattr(compiled, "_traced", through_dynamo)

    def run(fused_run, **kwargs):
        g = torch.Generator().manual_seed(2)
        params = [torch.randn(s, generator=g).requires_grad_() for s in [(6, 3), (11,), (2, 2, 5)]]
        opt = DualAdam(params, lr=1e-2, weight_decay=0.1, switch_rate=0.01, **kwargs)
        for t in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
            if fused_run and t == 0:
                forbid_dynamo()
        return params

    _fused_matches_foreach(run)


def test_fused_blend_lets_go_of_the_grads_and_follows_a_change_of_maximize(compiled_calls):
    """The fused blend's bound calls (``direct_compile.BoundCall``) keep the params' and moments' inputs from
    step to step, never the grads: a grad set to None after the step is freed. Turning on ``maximize``
    mid-run switches to the other compiled code, still matching the foreach path."""

    def run(check_freed, **kwargs):
        g = torch.Generator().manual_seed(3)
        params = [torch.randn(s, generator=g).requires_grad_() for s in [(4, 5), (7,), (3, 1, 2)]]
        opt = DualAdam(params, lr=1e-2, switch_rate=0.01, **kwargs)
        for t in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.param_groups[0]["maximize"] = t >= 3
            opt.step()
            grads = [weakref.ref(p.grad) for p in params]
            opt.zero_grad(set_to_none=True)
            if check_freed:
                assert all(grad() is None for grad in grads), f"a grad outlived zero_grad after step {t + 1}"
        return params

    _fused_matches_foreach(run)


def test_fused_blend_puts_tensors_of_several_groups_in_one_chunk(compiled_calls):
    """Three param groups (their own lr and weight decay; one bias-corrected per parameter, with a param that
    first gets a gradient at step 3): one compiled call per step for their 15 tensors, not one per group
    or step count, and the foreach path's trajectory."""

    def run(count_calls, **kwargs):
        g = torch.Generator().manual_seed(4)
        params = [torch.randn(3, i + 2, generator=g).requires_grad_() for i in range(15)]
        opt = DualAdam([{"params": params[:5], "lr": 1e-2, "weight_decay": 0.1},
                        {"params": params[5:10], "lr": 3e-3},
                        {"params": params[10:], "lr": 2e-2, "bias_correction": "per_parameter"}],
                       switch_rate=0.01, **kwargs)
        for t in range(5):
            for p in params[:-1] if t < 2 else params:
                p.grad = torch.randn(p.shape, generator=g)
            compiled_calls.clear()
            opt.step()
            if count_calls:
                assert len(compiled_calls) == 1, f"step {t + 1}: {compiled_calls} for 15 tensors"
        return params

    _fused_matches_foreach(run)


def test_fused_blend_binds_channels_last_params_and_checks_each_grads_layout(compiled_calls):
    """channels_last conv weights (the suite's layout on CUDA) take the bound calls like contiguous params do,
    reading each grad in its param's memory order; a step whose grad is laid out otherwise goes the
    per-tensor way instead (a bound call would read it in the wrong order). Both match the foreach path."""

    def run(count_calls, **kwargs):
        g = torch.Generator().manual_seed(5)
        convs = [torch.randn(4, 3, 3, 3, generator=g).to(memory_format=torch.channels_last).requires_grad_()
                 for _ in range(3)]
        biases = [torch.randn(4, generator=g).requires_grad_() for _ in range(2)]
        opt = DualAdam([{"params": convs, "weight_decay": 0.1}, {"params": biases, "lr": 3e-2}], lr=1e-2,
                       switch_rate=0.01, **kwargs)
        for t in range(5):
            for p in convs:  # autograd's layout (channels_last) for 4 steps, then a contiguous grad
                p.grad = torch.randn(p.shape, generator=g).to(memory_format=torch.channels_last if t < 4 else
                                                              torch.contiguous_format)
            for p in biases:
                p.grad = torch.randn(p.shape, generator=g)
            compiled_calls.clear()
            opt.step()
            if count_calls and t > 0:
                expected = ["BoundCall"] if t < 4 else ["DirectCompiled"]
                assert compiled_calls == expected, f"step {t + 1}: {compiled_calls}"
        return convs + biases

    _fused_matches_foreach(run)
