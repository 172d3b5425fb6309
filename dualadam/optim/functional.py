"""The DualAdam update on lists of tensors, in three interchangeable implementations.

All three compute, for one param group at global step ``t`` with mixing weight ``alpha`` (already cut off):

    m <- beta1 * m + (1 - beta1) * g
    v <- beta2 * v + (1 - beta2) * g^2
    d  = sqrt(v / (1 - beta2^t)) + eps                       # eps sits inside the inverse step too
    p <- p - lr * weight_decay * p                           # decoupled, scaled by lr
    p <- p - lr * ((1 - alpha) * m_hat / d + alpha * m_hat * d),   m_hat = m / (1 - beta1^t)

- ``reference_step``: one tensor at a time, the authors' op sequence verbatim. Slow, obviously faithful;
  the other two are held equal to it by the tests.
- ``foreach_step``: ``torch._foreach_*`` over the whole list, about eight multi-tensor ops a step.
- ``fused_step``: one pass over memory. Blend phase: a ``torch.compile``d list step whose per-step scalars are
  0-d tensors (so nothing recompiles as alpha and the bias corrections move). Pure-Adam phase
  (alpha == 0): torch's own fused AdamW kernel, which is exactly this update there.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class StepScalars:
    """Host-side scalars for one step of one param group. ``alpha`` is the inverse-Adam weight."""

    step: int
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    alpha: float
    maximize: bool

    @property
    def bias_correction1(self) -> float:
        return 1.0 - self.beta1**self.step

    @property
    def bias_correction2(self) -> float:
        return 1.0 - self.beta2**self.step

    @property
    def adam_coef(self) -> float:
        """Multiplies m / d in the update: -lr * (1 - alpha) / bc1."""
        return -self.lr * (1.0 - self.alpha) / self.bias_correction1

    @property
    def inverse_coef(self) -> float:
        """Multiplies m * d in the update: -lr * alpha / bc1."""
        return -self.lr * self.alpha / self.bias_correction1

    @property
    def decay(self) -> float:
        return 1.0 - self.lr * self.weight_decay


def reference_step(params, grads, exp_avgs, exp_avg_sqs, s: StepScalars) -> None:
    """The authors' per-parameter arithmetic, op for op (LongJin-lab/DualAdam, ``DualAdam.py``)."""
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        if s.maximize:
            g = -g
        m.mul_(s.beta1).add_((1.0 - s.beta1) * g)
        v.mul_(s.beta2).addcmul_(g, g, value=1 - s.beta2)
        m_hat = m.div(s.bias_correction1)
        v_hat = v.div(s.bias_correction2)
        ada_norm = v_hat.sqrt().add(s.eps)
        adam_update = m_hat / ada_norm
        if s.weight_decay != 0:
            p.add_(p, alpha=-s.weight_decay * s.lr)
        if s.alpha > 0:
            inverse_update = m_hat * ada_norm
            p.add_(-s.lr * ((1.0 - s.alpha) * adam_update + s.alpha * inverse_update))
        else:
            p.add_(-s.lr * adam_update)


def foreach_step(params, grads, exp_avgs, exp_avg_sqs, s: StepScalars) -> None:
    """Multi-tensor update. Every scalar is one Python float because DualAdam's step count is global."""
    if s.maximize:
        grads = torch._foreach_neg(grads)
    if s.weight_decay != 0:
        torch._foreach_mul_(params, s.decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - s.beta1)
    torch._foreach_mul_(exp_avg_sqs, s.beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - s.beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, math.sqrt(s.bias_correction2))
    torch._foreach_add_(denom, s.eps)
    if s.alpha < 1.0:
        torch._foreach_addcdiv_(params, exp_avgs, denom, value=s.adam_coef)
    if s.alpha > 0.0:
        torch._foreach_addcmul_(params, exp_avgs, denom, value=s.inverse_coef)


# ---------------------------------------------------------------------------------------------------------
# fused: compiled blend + torch's fused AdamW kernel after the hand-over


def _blend_step_eager(params, grads, exp_avgs, exp_avg_sqs, decay: Tensor, adam_coef: Tensor,
                      inverse_coef: Tensor, inv_sqrt_bc2: Tensor, beta1: float, beta2: float, eps: float,
                      maximize: bool) -> None:
    # Scalars that change every step arrive as 0-d tensors so the graph never recompiles; beta/eps are
    # per-group constants and may be baked in. Inductor turns each tensor's body into one loop.
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        if maximize:
            g = -g
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        d = v.sqrt() * inv_sqrt_bc2 + eps
        p.mul_(decay).add_(adam_coef * m / d + inverse_coef * m * d)


_compiled_blend_step = None
_compile_failed = False


def _get_compiled_blend_step():
    global _compiled_blend_step
    if _compiled_blend_step is None:
        _compiled_blend_step = torch.compile(_blend_step_eager, fullgraph=True, dynamic=False)
    return _compiled_blend_step


def fused_kernel_available(device: torch.device) -> bool:
    """torch's fused AdamW kernel: private but stable since 2.0 (CUDA) and 2.4 (CPU); used by torch.optim."""
    return hasattr(torch, "_fused_adamw_") and device.type in ("cpu", "cuda", "mps", "xpu")


def _scalar_dtype(dtype: torch.dtype) -> torch.dtype:
    # Scalars in the param dtype keep fp32/fp64 kernels at full speed and precision; bf16/fp16 scalars
    # would round lr * alpha / bc1 to 3 significant digits, so low-precision params get fp32 scalars.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class FusedScalars:
    """Reusable 0-d device tensors for one (device, dtype): updated in place with ``fill_`` each step."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        kw = dict(device=device, dtype=_scalar_dtype(dtype))
        self.decay = torch.ones((), **kw)
        self.adam_coef = torch.zeros((), **kw)
        self.inverse_coef = torch.zeros((), **kw)
        self.inv_sqrt_bc2 = torch.ones((), **kw)
        # The fused AdamW kernel reads (never writes) the step; one float32 0-d tensor serves every param.
        self.step = torch.zeros((), device=device, dtype=torch.float32)

    def update(self, s: StepScalars) -> None:
        self.decay.fill_(s.decay)
        self.adam_coef.fill_(s.adam_coef)
        self.inverse_coef.fill_(s.inverse_coef)
        self.inv_sqrt_bc2.fill_(1.0 / math.sqrt(s.bias_correction2))
        self.step.fill_(s.step)


def fused_step(params, grads, exp_avgs, exp_avg_sqs, s: StepScalars, scalars: FusedScalars) -> None:
    """Single-pass update for one (device, dtype) list; falls back to ``foreach_step`` where it must."""
    global _compile_failed
    scalars.update(s)
    if s.alpha == 0.0 and fused_kernel_available(params[0].device):
        torch._fused_adamw_(
            params, grads, exp_avgs, exp_avg_sqs, [], [scalars.step] * len(params),
            lr=s.lr, beta1=s.beta1, beta2=s.beta2, weight_decay=s.weight_decay, eps=s.eps,
            amsgrad=False, maximize=s.maximize,
        )
        return
    if _compile_failed:
        foreach_step(params, grads, exp_avgs, exp_avg_sqs, s)
        return
    try:
        _get_compiled_blend_step()(
            params, grads, exp_avgs, exp_avg_sqs, scalars.decay, scalars.adam_coef, scalars.inverse_coef,
            scalars.inv_sqrt_bc2, s.beta1, s.beta2, s.eps, s.maximize,
        )
    except Exception as err:  # no C++ compiler, unsupported backend, ...: stay correct, lose speed
        # Compilation fails before the graph runs, so no tensor has been touched yet.
        _compile_failed = True
        warnings.warn(f"DualAdam(fused=True) could not compile its blend step ({type(err).__name__}: {err}); "
                      "using the foreach path instead.", RuntimeWarning, stacklevel=3)
        foreach_step(params, grads, exp_avgs, exp_avg_sqs, s)
