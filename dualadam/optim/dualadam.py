"""DualAdam and InvAdam.

Paper: "Combining Adam and its Inverse Counterpart to Enhance Generalization of Deep Learning Optimizers",
arXiv 2603.07122 (2026). Original code: LongJin-lab/DualAdam, ``DualAdam.py``. Where paper and code could
differ we follow the code, whose trajectories ``tests/test_golden.py`` reproduces to 1e-10 relative error.

With t the global step count (one counter for all param groups, as in the reference), and lr, wd per group:

    m_t = beta1 m_{t-1} + (1 - beta1) g_t            m_hat = m_t / (1 - beta1^t)
    v_t = beta2 v_{t-1} + (1 - beta2) g_t^2          v_hat = v_t / (1 - beta2^t)
    d_t = sqrt(v_hat) + eps
    alpha_t = max(0, 1 - t * switch_rate),  and alpha_t = 0 once alpha_t < switch_rate   (linear schedule)
    p <- p - lr * wd * p
    p <- p - lr * ((1 - alpha_t) * m_hat / d_t + alpha_t * m_hat * d_t)

InvAdam is the alpha_t = 1 case: ``p <- p - lr * m_hat * d_t``. The inverse step multiplies by ``d_t``
(eps included) where Adam divides, so it is large where the gradient variance is large.

The blend lasts ``1 / switch_rate`` steps. The class default ``switch_rate=8e-5`` is the value the authors'
experiments used (12,500 steps, about 32 epochs of CIFAR at batch 128); their class default was 0.01 (100
steps). Unlike the reference, the step count is saved in ``state_dict()`` (as ``param_group['step']``, a 0-d
float64 tensor, so a ``torch.compile``d ``step()`` does not recompile as it grows), so a reloaded optimizer
continues mid-blend instead of silently restarting at alpha = 1.

Late-joining parameters. With the default ``bias_correction="global"`` (the reference's behaviour) every
parameter is bias-corrected with the global step t, also one that joins late (``add_param_group`` mid-run,
or a first gradient at step 20,000) and whose moments start at zero: its first step is then
``lr * (1 - beta1) * g / (sqrt(1 - beta2) |g| + eps)`` instead of Adam's ``lr * sign(g)``, e.g. 3.16x lr for
beta2 = 0.999 in the Adam phase. ``bias_correction="per_parameter"`` bias-corrects each parameter by its own
count of steps with a gradient (what torch's Adam does). Alpha follows the global step either way: the
hand-over is one schedule for the whole model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from functools import partial

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

from dualadam.optim.functional import (
    StepScalars,
    foreach_step,
    fused_adamw_available,
    fused_adamw_step,
    reference_step,
    traced_step,
)
from dualadam.optim.fused_blend import BlendBucket, BlendBuffers, compiled_blend_step
from dualadam.optim.schedules import check_schedule_name, inverse_adam_rate
from dualadam.optim.state_dicts import check_loadable

PAPER_SWITCH_RATE = 8e-5
BIAS_CORRECTIONS = ("global", "per_parameter")


def _validate(lr, betas, eps, weight_decay, switch_rate, bias_correction, foreach, fused) -> None:
    # Tensor lr/betas follow torch.optim.Adam's checks and messages word for word.
    if isinstance(lr, Tensor):
        if foreach:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate lr={lr}: must be >= 0")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid eps={eps}: must be >= 0")
    if len(betas) != 2:
        raise ValueError(f"Invalid betas={betas}: expected two values (beta1, beta2)")
    if isinstance(betas[0], Tensor) != isinstance(betas[1], Tensor):
        raise ValueError("betas must be either both floats or both Tensors")
    for i, beta in enumerate(betas):
        if isinstance(beta, Tensor):
            if foreach:
                raise ValueError(f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True")
            if beta.numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta{i + 1}={beta} in betas={tuple(betas)}: must be in [0, 1)")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay={weight_decay}: must be >= 0")
    if not 0.0 <= switch_rate <= 1.0:
        raise ValueError(f"Invalid switch_rate={switch_rate}: must be in [0, 1] (blend lasts 1/switch_rate steps)")
    if bias_correction not in BIAS_CORRECTIONS:
        raise ValueError(f"Invalid bias_correction={bias_correction!r}: must be one of {BIAS_CORRECTIONS}")
    if fused and foreach:
        raise ValueError("fused=True and foreach=True cannot be set together; pick one")


def _step_tensor(count=0) -> Tensor:
    # float64 counts exactly to 2^53 (float32, torch's choice, stalls at 2^24 = 16.7M steps); on the CPU
    # so that reading it in eager mode never waits for a GPU.
    return torch.tensor(float(count), dtype=torch.float64)


class HostStepCounts:
    """Python-int copies of the 0-d step tensors, so an eager step reads no tensor: a read per step would be
    a host sync where a step tensor sits on a device, and it is one more dispatch either way. A compiled
    step advances only the tensors, so it forgets the copies; so does loading a state dict."""

    def __init__(self):
        self._counts: dict[int, tuple[Tensor, int]] = {}

    def advanced(self, step: Tensor) -> int:
        """The count of ``step`` just after it was incremented by one."""
        entry = self._counts.get(id(step))
        count = entry[1] + 1 if entry is not None and entry[0] is step else int(step)
        self._counts[id(step)] = (step, count)
        return count

    def forget(self) -> None:
        self._counts.clear()


def _as_float(x) -> float:
    return x.item() if isinstance(x, Tensor) else x


class DualAdam(Optimizer):
    """Adam blended with its inverse, handing over to Adam linearly. See the module docstring for the math.

    Args:
        params: parameters or param groups.
        lr: learning rate (float, or a 1-element tensor as in torch.optim.Adam).
        betas: moment decay rates (beta1, beta2), both floats or both 1-element tensors.
        eps: added to sqrt(v_hat) in both the Adam and the inverse step.
        weight_decay: decoupled decay, applied as ``p -= lr * weight_decay * p``.
        switch_rate: xi; the blend lasts ``1 / switch_rate`` steps. Default 8e-5 (the authors' experiments).
        schedule: mixing schedule name, ``"linear"`` (paper) or ``"cosine"``; see ``schedules.py``.
        bias_correction: ``"global"`` (reference; every parameter uses the global step) or
            ``"per_parameter"`` (each parameter its own step count, as torch's Adam); see the module docstring.
        maximize: ascend instead of descend.
        foreach: ``True``: the multi-tensor path throughout; ``False``: the per-tensor reference path.
        fused: ``True``: a compiled one-pass blend, then torch's fused AdamW kernel after the hand-over.
            With neither set (the default) the blend runs on the foreach path and the pure-Adam phase on
            torch's fused AdamW kernel where the device has one.

    Each param group carries ``step`` (the global step count, a 0-d float64 tensor saved in ``state_dict``)
    and ``inverse_adam_rate`` (alpha used by the most recent step, for logging; a 0-d float64 tensor,
    read it with ``float()``). With ``bias_correction="per_parameter"`` each parameter's state also
    holds its own ``step``.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] | tuple[Tensor, Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        switch_rate: float = PAPER_SWITCH_RATE,
        schedule: str = "linear",
        *,
        bias_correction: str = "global",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ):
        _validate(lr, betas, eps, weight_decay, switch_rate, bias_correction, foreach, fused)
        check_schedule_name(schedule)
        if isinstance(lr, Tensor):
            lr = lr.squeeze()  # torch keeps a 1-element tensor lr as a 0-d tensor
        defaults = dict(lr=lr, betas=tuple(b.squeeze() if isinstance(b, Tensor) else b for b in betas), eps=eps,
                        weight_decay=weight_decay, switch_rate=switch_rate, schedule=schedule,
                        bias_correction=bias_correction, maximize=maximize, foreach=foreach, fused=fused,
                        capturable=True)
        # ``capturable`` is never read here. dynamo's optimizer support sets it to True in every group on the
        # first compiled step; a group that then changes (a new key, a new value) fails dynamo's guards and
        # recompiles. True is also honest for a step the caller compiles: it reads no value on the host.
        super().__init__(params, defaults)
        self._kernel_buffers: dict = {}  # per device (fused AdamW step) and per (device, dtype) (blend)
        self._host_counts = HostStepCounts()

    def add_param_group(self, param_group: dict) -> None:
        # One step counter for all groups, as in the reference: a group added later joins at the current count.
        param_group.setdefault("step", _step_tensor(self.global_step if hasattr(self, "param_groups") else 0))
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._alpha_as_tensor(group)

    def load_state_dict(self, state_dict: dict) -> None:
        """Refuses other optimizers' state dicts with a ValueError that says how to go on; loads ours, also
        those saved before the step became a tensor (``int`` steps), continuing bit for bit."""
        check_loadable(state_dict)
        super().load_state_dict(state_dict)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_kernel_buffers", {})
        self.__dict__["_host_counts"] = HostStepCounts()
        for group in self.param_groups:
            step = group.setdefault("step", 0)
            if not isinstance(step, Tensor):  # saved before the step became a tensor
                group["step"] = _step_tensor(step)
            group.setdefault("schedule", "linear")
            group.setdefault("bias_correction", "global")
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group["capturable"] = True
            self._alpha_as_tensor(group)

    def _alpha_as_tensor(self, group: dict) -> None:
        # A 0-d tensor updated in place: a float that changes every step would recompile a compiled step.
        alpha = group.get("inverse_adam_rate", self._alpha(group, int(group["step"])))
        if not isinstance(alpha, Tensor):
            group["inverse_adam_rate"] = _step_tensor(alpha)

    @staticmethod
    def _alpha(group: dict, step: int | Tensor) -> float | Tensor:
        return inverse_adam_rate(group["schedule"], step, group["switch_rate"])

    @property
    def global_step(self) -> int:
        """Steps taken so far (the reference's ``self._step``)."""
        return max((int(g["step"]) for g in self.param_groups), default=0)

    def _init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, steps) -> bool:
        """Fill the lists with the params that have grads and their state, creating state on first use.

        The name and signature are torch.optim's: under ``torch.compile`` dynamo runs this eagerly at trace
        time instead of tracing it, so creating the state does not cost a second graph. ``steps[i]`` is the
        0-d tensor whose count bias-corrects ``params[i]``.
        """
        # Whole-list comprehensions rather than one loop with per-parameter checks: for a 240-tensor LoRA set
        # that loop cost ~0.4 ms a step, a fifth of torch's fused Adam step.
        with_grad = [p for p in group["params"] if p.grad is not None]
        group_grads = [p.grad for p in with_grad]
        if any(g.is_sparse for g in group_grads):
            raise RuntimeError("DualAdam does not support sparse gradients; use dense gradients "
                               "(e.g. nn.Embedding(sparse=False)) or torch.optim.SparseAdam")
        if any(dtype.is_complex for dtype in {p.dtype for p in with_grad}):  # a quarter of torch.is_complex's time
            raise RuntimeError("DualAdam does not support complex parameters; pass torch.view_as_real(p)")
        states = [self.state[p] for p in with_grad]
        per_parameter = group["bias_correction"] == "per_parameter"
        for p, state in zip(with_grad, states):
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if per_parameter and "step" not in state:
                state["step"] = _step_tensor()
        params += with_grad
        grads += group_grads
        exp_avgs += [state["exp_avg"] for state in states]
        exp_avg_sqs += [state["exp_avg_sq"] for state in states]
        steps += [state["step"] for state in states] if per_parameter else [group["step"]] * len(states)
        return False

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        compiling = torch.compiler.is_compiling()
        blends = defaultdict(list)  # the fused blend's buckets, run together after the loop (see ``_update``)
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, steps)
            group["step"] += 1.0  # a float: an int would cost a dtype conversion (an allocation)
            if group["bias_correction"] == "per_parameter" and steps:
                torch._foreach_add_(steps, 1.0)
            # The step count: a 0-d tensor in a graph the caller compiles (alpha too), else a Python int.
            if compiling:
                self._host_counts.forget()
            count = group["step"] if compiling else self._host_counts.advanced(group["step"])
            alpha = self._alpha(group, count)
            group["inverse_adam_rate"].fill_(alpha)
            if compiling:
                self._traced_update(group, count, alpha, params, grads, exp_avgs, exp_avg_sqs, steps)
            else:
                self._eager_update(group, count, alpha, params, grads, exp_avgs, exp_avg_sqs, steps, blends)
        for (device, dtype, _), buckets in blends.items():
            compiled_blend_step(buckets, self._buffer((device, dtype), partial(BlendBuffers, device, dtype)))
        return loss

    @staticmethod
    def _scalars(group: dict, step, alpha, eager: bool) -> StepScalars:
        # Eager paths take Python floats (the foreach scalar overloads, torch's kernel arguments); a traced
        # step keeps tensors as tensors so that nothing is baked into the graph.
        get = _as_float if eager else (lambda x: x)
        return StepScalars(step=step, lr=get(group["lr"]), beta1=get(group["betas"][0]),
                           beta2=get(group["betas"][1]), eps=get(group["eps"]), weight_decay=group["weight_decay"],
                           alpha=alpha, maximize=group["maximize"])

    def _traced_update(self, group, count, alpha, params, grads, exp_avgs, exp_avg_sqs, steps) -> None:
        if group["bias_correction"] == "global":
            traced_step(params, grads, exp_avgs, exp_avg_sqs, self._scalars(group, count, alpha, eager=False))
            return
        for tensors in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
            traced_step(*([t] for t in tensors[:4]), self._scalars(group, tensors[4], alpha, eager=False))

    def _eager_update(self, group, count, alpha, params, grads, exp_avgs, exp_avg_sqs, steps, blends) -> None:
        # Lists by step count, then by (device, dtype) for the multi-tensor kernels with torch.optim's own
        # grouping, in C++ (a Python loop over a 240-tensor LoRA set cost ~0.15 ms a step, 7% of torch's
        # fused Adam step).
        for step_count, tensors in self._split_by_count(group, count, params, grads, exp_avgs, exp_avg_sqs, steps):
            s = self._scalars(group, step_count, alpha, eager=True)
            for (device, dtype), (grouped, _) in _group_tensors_by_device_and_dtype(tensors).items():
                self._update(group, grouped, s, device, dtype, blends)

    def _split_by_count(self, group, count, params, grads, exp_avgs, exp_avg_sqs, steps):
        """(count, [params, grads, exp_avgs, exp_avg_sqs]) per step count: one with global bias correction;
        per-parameter bias correction has more only for late joiners."""
        if group["bias_correction"] == "global":
            return [(count, [params, grads, exp_avgs, exp_avg_sqs])]
        by_count: dict = defaultdict(lambda: ([], [], [], []))
        counts = {}
        for p, g, m, v, s in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
            if id(s) not in counts:
                counts[id(s)] = self._host_counts.advanced(s)
            for lst, t in zip(by_count[counts[id(s)]], (p, g, m, v)):
                lst.append(t)
        return [(c, list(lists)) for c, lists in by_count.items()]

    def _update(self, group: dict, tensors, s: StepScalars, device: torch.device, dtype: torch.dtype,
                blends: dict) -> None:
        """The one place that picks an implementation for an eager step (see ``functional.py``). The fused
        blend only collects here: ``step`` runs it once for every param group, one compiled call per chunk of
        tensors whatever group each comes from (``fused_blend.py``)."""
        fused, foreach = group["fused"], group["foreach"]
        if s.alpha == 0 and (fused or (fused is None and foreach is None)) and fused_adamw_available(device):
            fused_adamw_step(*tensors, s, self._buffer(device, lambda: torch.zeros((), device=device)))
        elif fused:
            blends[device, dtype, s.maximize].append(BlendBucket(tensors, s))
        elif foreach is False:
            reference_step(*tensors, s)
        else:
            foreach_step(*tensors, s)

    def _buffer(self, key, make):
        """Device tensors the fused kernels reuse from step to step (created on first use)."""
        if key not in self._kernel_buffers:
            self._kernel_buffers[key] = make()
        return self._kernel_buffers[key]


class InvAdam(DualAdam):
    """The pure inverse update, DualAdam's alpha = 1 case: ``p <- p - lr * m_hat * (sqrt(v_hat) + eps)``."""

    def __init__(
        self,
        params: Iterable,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        bias_correction: str = "global",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, switch_rate=0.0,
                         schedule="constant", bias_correction=bias_correction, maximize=maximize,
                         foreach=foreach, fused=fused)
