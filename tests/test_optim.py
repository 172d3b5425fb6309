"""DualAdam/InvAdam behaviour beyond the golden trajectories: checkpoints, paths, dtypes, schedules, errors."""

from __future__ import annotations

import io
import math

import pytest
import torch

from dualadam import DualAdam, InvAdam
from dualadam.optim import MIXING_SCHEDULES, inverse_adam_rate, load_moments
from tests.golden import load_runs, replay
from tests.test_golden import PATHS, make_dualadam

GOLDEN_RUN = load_runs()[0]  # switch_rate 0.01: the blend ends at step 100 of 300


def _round_trip(opt: DualAdam, params) -> DualAdam:
    """Serialize the optimizer for real (torch.save) and load it into a fresh instance."""
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh = type(opt)([dict(g, params=[params[i] for i in idx]) for g, idx in
                       zip(opt.param_groups, _group_indices(opt, params))])
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def _group_indices(opt, params):
    ids = {id(p): i for i, p in enumerate(params)}
    return [[ids[id(p)] for p in g["params"]] for g in opt.param_groups]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("reload_at", [50, 99, 100])
def test_state_dict_round_trip_continues_bit_for_bit(path, reload_at):
    """Reload mid-blend (50), just before (99) and at (100) the hand-over: the trajectory must not notice."""
    make = make_dualadam(PATHS[path])
    straight = replay(GOLDEN_RUN, make)

    def reload(t, opt, params):
        if t == reload_at:
            fresh = _round_trip(opt, params)
            assert fresh.global_step == reload_at
            assert fresh.param_groups[0]["inverse_adam_rate"] == opt.param_groups[0]["inverse_adam_rate"]
            return fresh

    resumed = replay(GOLDEN_RUN, make, on_step=reload)
    for t in straight:
        for a, b in zip(straight[t], resumed[t]):
            assert torch.equal(a, b), f"step {t} differs after reloading at step {reload_at}"


def _random_problem(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(17, 5), (5,), (), (0,), (3, 2, 2)]
    params = [(0.1 * torch.randn(s, generator=g, dtype=torch.float64)).to(dtype) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes] for _ in range(30)]
    return params, grads


def _run_path(kwargs, dtype, steps=30, **hyper):
    params, grads = _random_problem(dtype)
    params = [p.clone().requires_grad_() for p in params]
    opt = DualAdam(params, lr=1e-2, weight_decay=0.1, switch_rate=1 / 20, **hyper, **kwargs)
    for t in range(steps):
        for p, g in zip(params, grads[t]):
            p.grad = g.clone()
        opt.step()
    return [p.detach().double() for p in params], params


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 0.15),
                                       (torch.float16, 0.03)])
@pytest.mark.parametrize("path", ["foreach", "fused", "default", "per_parameter"])
def test_fast_paths_agree_with_reference_in_low_precision(path, dtype, tol):
    """30 steps across the hand-over (step 20). The paths round in different places, so they agree to a
    fraction of the distance travelled that reflects the dtype's precision (bf16: 8 mantissa bits)."""
    start, _ = _random_problem(dtype)
    ref, _ = _run_path(PATHS["reference"], dtype)
    fast, _ = _run_path(PATHS[path], dtype)
    for r, f, s in zip(ref, fast, start):
        if r.numel():
            travelled = (r - s.double()).abs().max().item()
            assert (r - f).abs().max().item() <= tol * travelled


def test_params_without_grads_are_untouched_and_stateless():
    used, unused = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = DualAdam([used, unused], lr=0.1, weight_decay=0.5)
    used.grad = torch.ones(3)
    opt.step()
    assert torch.equal(unused, torch.ones(3)) and unused not in opt.state
    assert not torch.equal(used, torch.ones(3))


def test_first_step_matches_closed_form():
    """At t=1, m_hat = g and v_hat = g^2, so Adam's step is g/(|g|+eps) and the inverse step g(|g|+eps)."""
    g = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    lr, eps, xi = 0.1, 1e-8, 0.25
    alpha = 1 - xi  # the weight the first step uses
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    p.grad = g.clone()
    DualAdam([p], lr=lr, eps=eps, switch_rate=xi).step()
    d = g.abs() + eps
    expected = -lr * ((1 - alpha) * g / d + alpha * g * d)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-14, atol=0)

    q = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    q.grad = g.clone()
    InvAdam([q], lr=lr, eps=eps).step()
    torch.testing.assert_close(q.detach(), -lr * g * d, rtol=1e-14, atol=0)


def test_invadam_is_dualadam_with_zero_switch_rate():
    params, grads = _random_problem(torch.float64)
    pa = [p.clone().requires_grad_() for p in params]
    pb = [p.clone().requires_grad_() for p in params]
    inv, dual = InvAdam(pa, lr=1e-2), DualAdam(pb, lr=1e-2, switch_rate=0.0)
    for t in range(10):
        for p, q, g in zip(pa, pb, grads[t]):
            p.grad, q.grad = g.clone(), g.clone()
        inv.step()
        dual.step()
    assert inv.param_groups[0]["inverse_adam_rate"] == 1.0
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)


@pytest.mark.parametrize("path", PATHS)
def test_maximize_equals_minimizing_the_negated_loss(path):
    params, grads = _random_problem(torch.float64)
    up = [p.clone().requires_grad_() for p in params]
    down = [p.clone().requires_grad_() for p in params]
    opt_up = DualAdam(up, lr=1e-2, switch_rate=0.1, maximize=True, **PATHS[path])
    opt_down = DualAdam(down, lr=1e-2, switch_rate=0.1, **PATHS[path])
    for t in range(15):
        for a, b, g in zip(up, down, grads[t]):
            a.grad, b.grad = -g, g.clone()
        opt_up.step()
        opt_down.step()
    for a, b in zip(up, down):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("schedule", sorted(MIXING_SCHEDULES))
def test_mixing_schedules_start_at_one_and_respect_the_hand_over(schedule):
    xi = 0.01
    rates = [inverse_adam_rate(schedule, t, xi) for t in range(0, 300)]
    assert rates[0] == 1.0
    assert all(0.0 <= r <= 1.0 for r in rates)
    assert all(r == 0.0 or r >= xi for r in rates), "below switch_rate the update must be plain Adam"
    if schedule == "constant":
        assert set(rates) == {1.0}
    else:
        assert all(a >= b for a, b in zip(rates, rates[1:])), "the blend hands over monotonically"
        assert min(rates[:50]) > 0.0 and rates[100] == 0.0 and rates[-1] == 0.0
    if schedule == "linear":
        assert rates[99] > 0.0, "the linear blend lasts exactly 1/switch_rate steps"


def test_linear_schedule_is_the_reference_expression():
    for t in range(1, 200):
        raw = max(0.0, 1.0 - t * 0.01)
        assert inverse_adam_rate("linear", t, 0.01) == (raw if raw >= 0.01 else 0.0)


def test_inverse_adam_rate_is_readable_per_group_and_follows_the_schedule():
    p = torch.zeros(2, requires_grad=True)
    opt = DualAdam([p], lr=1e-3, switch_rate=0.1, schedule="cosine")
    assert opt.param_groups[0]["inverse_adam_rate"] == 1.0
    for t in range(1, 12):
        p.grad = torch.ones(2)
        opt.step()
        assert opt.param_groups[0]["inverse_adam_rate"] == inverse_adam_rate("cosine", t, 0.1)
    assert opt.param_groups[0]["inverse_adam_rate"] == 0.0


def test_param_group_added_later_joins_the_global_step():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = DualAdam([a], lr=1e-3, switch_rate=0.1)
    for _ in range(3):
        a.grad = torch.ones(2)
        opt.step()
    opt.add_param_group({"params": [b], "lr": 1e-2})
    assert opt.param_groups[1]["step"] == 3
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    opt.step()
    assert [g["step"] for g in opt.param_groups] == [4, 4]
    assert opt.param_groups[1]["inverse_adam_rate"] == opt.param_groups[0]["inverse_adam_rate"]


def test_lr_scheduler_changes_the_step_size():
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = DualAdam([p], lr=1.0, switch_rate=1.0)  # pure Adam from step 1: each step moves p by ~lr
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    moves = []
    for _ in range(3):
        before = p.item()
        p.grad = torch.ones(1, dtype=torch.float64)
        opt.step()
        sched.step()
        moves.append(before - p.item())
    assert moves == pytest.approx([1.0, 0.5, 0.25], rel=1e-6)


def test_gradient_clipping_is_respected():
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    p.grad = torch.full((4,), 100.0, dtype=torch.float64)
    torch.nn.utils.clip_grad_norm_([p], max_norm=1.0)
    InvAdam([p], lr=1.0, eps=0.0).step()
    # InvAdam's first step is g*|g|: with the clipped g = 0.5 each, p moves by 0.25, not 10,000.
    torch.testing.assert_close(p.detach(), torch.full((4,), -0.25, dtype=torch.float64))


@pytest.mark.parametrize("path", PATHS)
def test_grad_scaler_unscales_and_skips_non_finite_steps(path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1).double()
    twin = torch.nn.Linear(4, 1).double()
    twin.load_state_dict(model.state_dict())
    opt = DualAdam(model.parameters(), lr=1e-2, switch_rate=0.1, **PATHS[path])
    plain = DualAdam(twin.parameters(), lr=1e-2, switch_rate=0.1, **PATHS[path])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    for _ in range(3):
        for m, o, scale in ((model, opt, True), (twin, plain, False)):
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            if scale:
                scaler.scale(loss).backward()
                scaler.step(o)
                scaler.update()
            else:
                loss.backward()
                o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)  # power-of-two scales unscale exactly

    opt.zero_grad()
    (scaler.scale(torch.nn.functional.mse_loss(model(x), y)) * float("inf")).backward()
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    assert opt.global_step == 3, "a skipped (inf) step must not advance the mixing schedule"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def rosenbrock(xy: torch.Tensor) -> torch.Tensor:
    x, y = xy[0], xy[1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_converges_on_rosenbrock(path, schedule):
    # From the origin: the inverse step grows like g^2, so starts with |grad| >> 1 (e.g. (-1.5, 2), where
    # |grad| ~ 150) make the blend phase diverge at this lr, as they would InvAdam.
    xy = torch.tensor([0.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = DualAdam([xy], lr=2e-2, switch_rate=1 / 200, schedule=schedule, **PATHS[path])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3000, eta_min=1e-4)
    start = rosenbrock(xy).item()
    for _ in range(3000):
        opt.zero_grad()
        rosenbrock(xy).backward()
        opt.step()
        sched.step()
    assert rosenbrock(xy).item() < 1e-6 * start
    torch.testing.assert_close(xy.detach(), torch.tensor([1.0, 1.0], dtype=torch.float64), atol=1e-3, rtol=0)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(lr=-1e-3), "lr=-0.001"),
    (dict(eps=-1.0), "eps=-1.0"),
    (dict(betas=(1.0, 0.999)), "beta1=1.0"),
    (dict(betas=(0.9, -0.1)), "beta2=-0.1"),
    (dict(weight_decay=-0.1), "weight_decay=-0.1"),
    (dict(switch_rate=1.5), "switch_rate=1.5"),
    (dict(switch_rate=-0.1), "switch_rate=-0.1"),
    (dict(schedule="exponential"), "cosine, linear"),
    (dict(foreach=True, fused=True), "fused=True and foreach=True"),
])
def test_bad_hyperparameters_raise_value_error_naming_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=None) as info:
        DualAdam([torch.zeros(1, requires_grad=True)], **kwargs)
    assert needle in str(info.value)


def test_sparse_gradients_raise_a_clear_error():
    emb = torch.nn.Embedding(5, 3, sparse=True)
    opt = DualAdam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


def test_old_checkpoint_without_step_defaults_sensibly():
    p = torch.zeros(2, requires_grad=True)
    opt = DualAdam([p], lr=1e-3, switch_rate=0.1)
    state = opt.state_dict()
    for group in state["param_groups"]:
        for key in ("step", "schedule", "inverse_adam_rate"):
            del group[key]
    opt.load_state_dict(state)
    assert opt.param_groups[0]["step"] == 0 and opt.param_groups[0]["schedule"] == "linear"
    assert math.isclose(opt.param_groups[0]["inverse_adam_rate"], 1.0)


def test_fused_falls_back_to_foreach_when_compilation_is_impossible(monkeypatch):
    """E.g. no C++ compiler: the step must warn once and stay exactly the foreach update."""
    from dualadam.optim import fused_blend

    def no_compiler(*args, **kwargs):
        raise RuntimeError("simulated: no working C++ compiler")

    monkeypatch.setattr(fused_blend, "_compiled_blend_step", no_compiler)
    monkeypatch.setattr(fused_blend, "_compile_failed", False)
    with pytest.warns(RuntimeWarning, match="could not compile"):
        fused, _ = _run_path(dict(fused=True), torch.float64)
    foreach, _ = _run_path(dict(foreach=True), torch.float64)
    for a, b in zip(fused, foreach):
        assert torch.equal(a, b)


def test_state_dict_saved_before_the_step_became_a_tensor_loads_and_continues_bit_for_bit():
    """The earlier format: ``step`` an int, ``inverse_adam_rate`` a float, no bias_correction/capturable."""
    make = make_dualadam({})
    straight = replay(GOLDEN_RUN, make)

    def reload_old_format(t, opt, params):
        if t == 50:
            state = opt.state_dict()
            for group in state["param_groups"]:
                group["step"] = int(group["step"])
                group["inverse_adam_rate"] = float(group["inverse_adam_rate"])
                del group["bias_correction"], group["capturable"]
            fresh = DualAdam([dict(g, params=[params[i] for i in idx]) for g, idx in
                              zip(opt.param_groups, _group_indices(opt, params))])
            fresh.load_state_dict(state)
            assert fresh.global_step == 50 and fresh.param_groups[0]["bias_correction"] == "global"
            return fresh

    resumed = replay(GOLDEN_RUN, make, on_step=reload_old_format)
    for t in straight:
        for a, b in zip(straight[t], resumed[t]):
            assert torch.equal(a, b), f"step {t} differs after reloading an old-format state dict"


def _trained_state_dict(optimizer_cls, **kwargs) -> dict:
    p = torch.ones(3, requires_grad=True)
    opt = optimizer_cls([p], **kwargs)
    p.grad = torch.ones(3)
    opt.step()
    return opt.state_dict()


@pytest.mark.parametrize("make,needle", [
    (lambda: _trained_state_dict(torch.optim.Adam, lr=1e-3), "torch.optim.Adam/AdamW"),
    (lambda: _trained_state_dict(torch.optim.AdamW, lr=1e-3), "torch.optim.Adam/AdamW"),
    (lambda: _trained_state_dict(torch.optim.SGD, lr=1e-3, momentum=0.9), "torch.optim.SGD"),
    (lambda: _trained_state_dict(torch.optim.RMSprop, lr=1e-3), "torch.optim.RMSprop"),
])
def test_other_optimizers_state_dicts_are_refused_with_a_way_forward(make, needle):
    opt = DualAdam([torch.ones(3, requires_grad=True)])
    with pytest.raises(ValueError) as info:
        opt.load_state_dict(make())
    message = str(info.value)
    assert needle in message and "load_moments" in message and "do not call load_state_dict" in message


@pytest.mark.parametrize("kwargs,needle", [
    (dict(weight_decay=0.1), "weight_decouple=False"),  # its default: coupled weight decay
    (dict(weight_decay=0.1, weight_decouple=True, fixed_decay=True), "fixed_decay=True"),
    (dict(weight_decay=0.1, weight_decouple=True), "give our update"),
])
def test_pytorch_optimizers_dualadam_state_dict_is_refused_not_silently_resumed(kwargs, needle):
    from pytorch_optimizer import DualAdam as OtherDualAdam

    state = _trained_state_dict(OtherDualAdam, lr=1e-3, **kwargs)
    opt = DualAdam([torch.ones(3, requires_grad=True)], weight_decay=0.1)
    with pytest.raises(ValueError, match="pytorch_optimizer's DualAdam") as info:
        opt.load_state_dict(state)
    assert needle in str(info.value)


def test_load_moments_continues_from_torch_adams_moments_and_step():
    """After the hand-over DualAdam is AdamW: continuing from AdamW's moments and step is AdamW's own run."""
    params, grads = _random_problem(torch.float64)
    a = [p.clone().requires_grad_() for p in params]
    b = [p.clone().requires_grad_() for p in params]
    adamw = torch.optim.AdamW(a, lr=1e-2, weight_decay=0.1)
    for t in range(10):
        for p, g in zip(a, grads[t]):
            p.grad = g.clone()
        adamw.step()
    with torch.no_grad():
        for p, q in zip(a, b):
            q.copy_(p)
    dual = DualAdam(b, lr=1e-2, weight_decay=0.1, switch_rate=1.0)
    load_moments(dual, adamw.state_dict())
    assert dual.global_step == 10
    for t in range(10, 20):
        for p, q, g in zip(a, b, grads[t]):
            p.grad, q.grad = g.clone(), g.clone()
        adamw.step()
        dual.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_tensor_lr_follows_torchs_checks_and_messages():
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        DualAdam([p], lr=torch.tensor([1e-3, 1e-3]))
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        torch.optim.Adam([p], lr=torch.tensor([1e-3, 1e-3]))
    with pytest.raises(ValueError, match="lr as a Tensor is not supported for capturable=False and foreach=True"):
        DualAdam([p], lr=torch.tensor(1e-3), foreach=True)
    with pytest.raises(ValueError, match="betas must be either both floats or both Tensors"):
        DualAdam([p], betas=(torch.tensor(0.9), 0.999))


@pytest.mark.parametrize("path", ["reference", "fused", "default"])
def test_tensor_lr_gives_the_float_lr_trajectory_and_follows_a_scheduler(path):
    def run(lr):
        params, grads = _random_problem(torch.float64)
        params = [p.clone().requires_grad_() for p in params]
        opt = DualAdam(params, lr=lr, switch_rate=0.1, **PATHS[path])
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        for t in range(15):
            for p, g in zip(params, grads[t]):
                p.grad = g.clone()
            opt.step()
            sched.step()
        return params

    for a, b in zip(run(1e-2), run(torch.tensor([1e-2], dtype=torch.float64))):
        assert torch.equal(a, b)


def _late_joiner_first_step(optimizer_cls, steps_before: int, **kwargs) -> torch.Tensor:
    """A param that gets its first gradient after ``steps_before`` steps of another param; its first move."""
    early = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    late = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = optimizer_cls([early, late], lr=0.1, **kwargs)
    for _ in range(steps_before):
        early.grad = torch.ones(3, dtype=torch.float64)
        opt.step()
    early.grad = torch.ones(3, dtype=torch.float64)
    late.grad = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    opt.step()
    return late.detach().clone()


@pytest.mark.parametrize("path", PATHS)
def test_per_parameter_bias_correction_gives_a_late_joiner_adams_first_step(path):
    """switch_rate=1: pure Adam from the first step, so a late joiner's first step must be torch Adam's."""
    adam = _late_joiner_first_step(torch.optim.Adam, 200)
    ours = _late_joiner_first_step(DualAdam, 200, switch_rate=1.0, **{**PATHS[path], "bias_correction": "per_parameter"})
    torch.testing.assert_close(ours, adam, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours.abs(), torch.full((3,), 0.1, dtype=torch.float64), rtol=1e-6, atol=0)


def test_global_bias_correction_keeps_the_references_large_first_step_for_a_late_joiner():
    """The default (the authors' behaviour): moments from zero, bias corrections of the global step 3001,
    so the first step is (1 - beta1) / sqrt(1 - beta2) ~ 3.16x lr once the corrections are near 1."""
    ours = _late_joiner_first_step(DualAdam, 3000, switch_rate=1.0)
    expected = 0.1 * (1 - 0.9) / (1 - 0.9**3001) / math.sqrt((1 - 0.999) / (1 - 0.999**3001))
    torch.testing.assert_close(ours.abs(), torch.full((3,), expected, dtype=torch.float64), rtol=1e-6, atol=0)
    assert ours.abs().max() > 3 * 0.1


def test_late_param_group_is_bias_corrected_by_its_own_steps_but_shares_alpha():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = DualAdam([a], lr=1e-3, switch_rate=0.1, bias_correction="per_parameter")
    for _ in range(3):
        a.grad = torch.ones(2)
        opt.step()
    opt.add_param_group({"params": [b]})
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    opt.step()
    assert int(opt.state[a]["step"]) == 4 and int(opt.state[b]["step"]) == 1
    assert float(opt.param_groups[1]["inverse_adam_rate"]) == float(opt.param_groups[0]["inverse_adam_rate"])
