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
steps). Unlike the reference, the step count is saved in ``state_dict()`` (as ``param_group['step']``), so a
reloaded optimizer continues mid-blend instead of silently restarting at alpha = 1.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch.optim import Optimizer

from dualadam.optim.functional import FusedScalars, StepScalars, foreach_step, fused_step, reference_step
from dualadam.optim.schedules import check_schedule_name, inverse_adam_rate

PAPER_SWITCH_RATE = 8e-5


def _validate(lr, betas, eps, weight_decay, switch_rate) -> None:
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate lr={lr}: must be >= 0")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid eps={eps}: must be >= 0")
    if len(betas) != 2:
        raise ValueError(f"Invalid betas={betas}: expected two values (beta1, beta2)")
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta{i + 1}={beta} in betas={tuple(betas)}: must be in [0, 1)")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay={weight_decay}: must be >= 0")
    if not 0.0 <= switch_rate <= 1.0:
        raise ValueError(f"Invalid switch_rate={switch_rate}: must be in [0, 1] (blend lasts 1/switch_rate steps)")


class DualAdam(Optimizer):
    """Adam blended with its inverse, handing over to Adam linearly. See the module docstring for the math.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: moment decay rates (beta1, beta2).
        eps: added to sqrt(v_hat) in both the Adam and the inverse step.
        weight_decay: decoupled decay, applied as ``p -= lr * weight_decay * p``.
        switch_rate: xi; the blend lasts ``1 / switch_rate`` steps. Default 8e-5 (the authors' experiments).
        schedule: mixing schedule name, ``"linear"`` (paper) or ``"cosine"``; see ``schedules.py``.
        maximize: ascend instead of descend.
        foreach: multi-tensor path (the default) or, with ``False``, the per-tensor reference path.
        fused: single-pass path: compiled blend step, then torch's fused AdamW kernel after the hand-over.

    Each param group carries ``step`` (the global step count, saved in ``state_dict``) and
    ``inverse_adam_rate`` (alpha used by the most recent step) for logging.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        switch_rate: float = PAPER_SWITCH_RATE,
        schedule: str = "linear",
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ):
        _validate(lr, betas, eps, weight_decay, switch_rate)
        check_schedule_name(schedule)
        if fused and foreach:
            raise ValueError("fused=True and foreach=True cannot be set together; pick one")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, switch_rate=switch_rate,
                        schedule=schedule, maximize=maximize, foreach=foreach, fused=fused)
        super().__init__(params, defaults)
        self._fused_scalars: dict[tuple[torch.device, torch.dtype], FusedScalars] = {}

    def add_param_group(self, param_group: dict) -> None:
        # One step counter for all groups, as in the reference: a group added later joins at the current count.
        param_group.setdefault("step", max((g["step"] for g in self.param_groups), default=0))
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("inverse_adam_rate", self._alpha(group, group["step"]))

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_fused_scalars", {})
        for group in self.param_groups:
            group.setdefault("step", 0)
            group.setdefault("schedule", "linear")
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("inverse_adam_rate", self._alpha(group, group["step"]))

    @staticmethod
    def _alpha(group: dict, step: int) -> float:
        return inverse_adam_rate(group["schedule"], step, group["switch_rate"])

    @property
    def global_step(self) -> int:
        """Steps taken so far (the reference's ``self._step``)."""
        return max((g["step"] for g in self.param_groups), default=0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            group["step"] += 1
            group["inverse_adam_rate"] = self._alpha(group, group["step"])
            buckets = self._collect(group)
            scalars = StepScalars(
                step=group["step"], lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                eps=group["eps"], weight_decay=group["weight_decay"], alpha=group["inverse_adam_rate"],
                maximize=group["maximize"],
            )
            for (device, dtype), tensors in buckets.items():
                if group["fused"]:
                    fused_step(*tensors, scalars, self._scalars_for(device, dtype))
                elif group["foreach"] is False:
                    reference_step(*tensors, scalars)
                else:
                    foreach_step(*tensors, scalars)
        return loss

    def _collect(self, group: dict) -> dict:
        """Params with grads, with their state, bucketed by (device, dtype) for the multi-tensor kernels."""
        buckets: dict = defaultdict(lambda: ([], [], [], []))
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("DualAdam does not support sparse gradients; use dense gradients "
                                   "(e.g. nn.Embedding(sparse=False)) or torch.optim.SparseAdam")
            if torch.is_complex(p):
                raise RuntimeError("DualAdam does not support complex parameters; pass torch.view_as_real(p)")
            state = self.state[p]
            if len(state) == 0:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params, grads, exp_avgs, exp_avg_sqs = buckets[(p.device, p.dtype)]
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
        return buckets

    def _scalars_for(self, device: torch.device, dtype: torch.dtype) -> FusedScalars:
        key = (device, dtype)
        if key not in self._fused_scalars:
            self._fused_scalars[key] = FusedScalars(device, dtype)
        return self._fused_scalars[key]


class InvAdam(DualAdam):
    """The pure inverse update, DualAdam's alpha = 1 case: ``p <- p - lr * m_hat * (sqrt(v_hat) + eps)``."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, switch_rate=0.0,
                         schedule="constant", maximize=maximize, foreach=foreach, fused=fused)
