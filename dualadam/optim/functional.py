"""The DualAdam update on lists of tensors, in interchangeable implementations.

All of them compute, for one list of tensors at bias-correction step ``t`` with mixing weight ``alpha``
(already cut off):

    m <- beta1 * m + (1 - beta1) * g
    v <- beta2 * v + (1 - beta2) * g^2
    d  = sqrt(v / (1 - beta2^t)) + eps                       # eps sits inside the inverse step too
    p <- p - lr * weight_decay * p                           # decoupled, scaled by lr
    p <- p - lr * ((1 - alpha) * m_hat / d + alpha * m_hat * d),   m_hat = m / (1 - beta1^t)

- ``reference_step``: one tensor at a time, the authors' op sequence verbatim. Slow, obviously faithful;
  the others are held equal to it by the tests.
- ``foreach_step``: ``torch._foreach_*`` over the whole list, about eight multi-tensor ops a step.
- ``fused_adamw_step``: torch's own one-pass AdamW kernel. Once alpha == 0 the update above *is* AdamW
  (decoupled decay lr * weight_decay, no amsgrad), so the pure-Adam phase needs nothing of ours.
- ``compiled_blend_step``: one pass over memory for the blend (alpha > 0). A ``torch.compile``d kernel over
  one flattened 1-D tensor with a dynamic length, called per tensor: its graphs do not depend on the number
  of tensors, their shapes or the param groups. Every scalar, betas and eps included, arrives as a 0-d
  tensor, so nothing recompiles as alpha, the bias corrections or a scheduler's lr/momentum move.
- ``traced_step``: what every path runs when the caller compiles ``optimizer.step()`` itself. The scalars
  are 0-d tensors computed in the graph from the step tensor, and the update has no Python branch on alpha
  (``alpha = 0`` makes the inverse term exactly 0), so both phases share one graph.

``DualAdam._update`` is the one place that picks among them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

Scalar = float | Tensor  # Python floats in eager mode; 0-d tensors inside a graph the caller compiles


@dataclass(frozen=True)
class StepScalars:
    """The scalars of one step for one list of tensors. ``step`` is the bias-correction step count and
    ``alpha`` the inverse-Adam weight. Every derived coefficient works on floats and on 0-d tensors."""

    step: int | Tensor
    lr: Scalar
    beta1: Scalar
    beta2: Scalar
    eps: Scalar
    weight_decay: float
    alpha: Scalar
    maximize: bool

    @property
    def bias_correction1(self) -> Scalar:
        return 1.0 - self.beta1**self.step

    @property
    def bias_correction2(self) -> Scalar:
        return 1.0 - self.beta2**self.step

    @property
    def inv_sqrt_bias_correction2(self) -> Scalar:
        bc2 = self.bias_correction2
        return torch.rsqrt(bc2) if isinstance(bc2, Tensor) else 1.0 / math.sqrt(bc2)

    @property
    def adam_coef(self) -> Scalar:
        """Multiplies m / d in the update: -lr * (1 - alpha) / bc1."""
        return -self.lr * (1.0 - self.alpha) / self.bias_correction1

    @property
    def inverse_coef(self) -> Scalar:
        """Multiplies m * d in the update: -lr * alpha / bc1."""
        return -self.lr * self.alpha / self.bias_correction1

    @property
    def decay(self) -> Scalar:
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
    """Multi-tensor update. Every scalar is one Python float because the lists share one step count.
    Its only param-sized temporary is the denominator ``d``."""
    if s.weight_decay != 0:
        torch._foreach_mul_(params, s.decay)
    if s.maximize:
        # m <- lerp(m, -g, w) without a negated copy of the grads: -lerp(-m, g, w) is the same value,
        # bit for bit (negation is exact and lerp rounds symmetrically).
        torch._foreach_neg_(exp_avgs)
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - s.beta1)
        torch._foreach_neg_(exp_avgs)
    else:
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - s.beta1)
    torch._foreach_mul_(exp_avg_sqs, s.beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - s.beta2)  # g^2: the sign is irrelevant
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, math.sqrt(s.bias_correction2))
    torch._foreach_add_(denom, s.eps)
    if s.alpha < 1.0:
        torch._foreach_addcdiv_(params, exp_avgs, denom, value=s.adam_coef)
    if s.alpha > 0.0:
        torch._foreach_addcmul_(params, exp_avgs, denom, value=s.inverse_coef)


# ---------------------------------------------------------------------------------------------------------
# torch's fused AdamW kernel: the whole update once alpha == 0


def fused_adamw_available(device: torch.device) -> bool:
    """torch's fused AdamW kernel: private but stable since 2.0 (CUDA) and 2.4 (CPU); used by torch.optim."""
    return hasattr(torch, "_fused_adamw_") and device.type in ("cpu", "cuda", "mps", "xpu")


def fused_adamw_step(params, grads, exp_avgs, exp_avg_sqs, s: StepScalars, scalars: FusedScalars) -> None:
    """Exactly the alpha == 0 update. The kernel only reads the step, so one device tensor serves all."""
    scalars.step.fill_(s.step)
    torch._fused_adamw_(
        params, grads, exp_avgs, exp_avg_sqs, [], [scalars.step] * len(params),
        lr=s.lr, beta1=s.beta1, beta2=s.beta2, weight_decay=s.weight_decay, eps=s.eps,
        amsgrad=False, maximize=s.maximize,
    )


# ---------------------------------------------------------------------------------------------------------
# the blend as one pass over each tensor: eager body, compiled per flattened tensor or traced by the caller


def blend_one(p, g, m, v, decay, one_minus_beta1, beta2, one_minus_beta2, inv_sqrt_bc2, eps, adam_coef,
              inverse_coef, maximize: bool) -> None:
    """One tensor's update with every scalar a 0-d tensor (or a float), and no branch on alpha."""
    if maximize:
        g = -g
    m.lerp_(g, one_minus_beta1)
    v.mul_(beta2).add_(one_minus_beta2 * g * g)
    d = v.sqrt() * inv_sqrt_bc2 + eps
    p.mul_(decay).add_(adam_coef * m / d + inverse_coef * m * d)


def _coefficients(s: StepScalars):
    return (s.decay, 1.0 - s.beta1, s.beta2, 1.0 - s.beta2, s.inv_sqrt_bias_correction2, s.eps, s.adam_coef,
            s.inverse_coef)


def traced_step(params, grads, exp_avgs, exp_avg_sqs, s: StepScalars) -> None:
    """The update inside a graph the caller compiles (``s`` holds 0-d tensors): one graph for both phases."""
    coefs = _coefficients(s)
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        blend_one(p, g, m, v, *coefs, s.maximize)


def _scalar_dtype(dtype: torch.dtype) -> torch.dtype:
    # Scalars in the param dtype keep fp32/fp64 kernels at full speed and precision; bf16/fp16 scalars
    # would round lr * alpha / bc1 to 3 significant digits, so low-precision params get fp32 scalars.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class FusedScalars:
    """Reusable 0-d device tensors for one (device, dtype): refilled in place each step, so the compiled
    kernel sees the same inputs (no recompile) and a CUDA step needs no host-to-device copy of a tensor."""

    NAMES = ("decay", "one_minus_beta1", "beta2", "one_minus_beta2", "inv_sqrt_bc2", "eps", "adam_coef",
             "inverse_coef")

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.values = [torch.zeros((), device=device, dtype=_scalar_dtype(dtype)) for _ in self.NAMES]
        # The fused AdamW kernel reads (never writes) the step; one float32 0-d tensor serves every param.
        self.step = torch.zeros((), device=device, dtype=torch.float32)

    def update(self, s: StepScalars) -> list[Tensor]:
        for tensor, value in zip(self.values, _coefficients(s)):
            tensor.fill_(value)
        return self.values


_compiled_blend_step = None
_compile_failed = False


def _get_compiled_blend_step():
    # dynamic=True: one graph for every length (dynamo specializes lengths 0 and 1 only), so the number of
    # graphs depends on dtypes and ``maximize``, never on how many tensors or param groups there are.
    global _compiled_blend_step
    if _compiled_blend_step is None:
        _compiled_blend_step = torch.compile(blend_one, fullgraph=True, dynamic=True)
    return _compiled_blend_step


def _is_dense(t: Tensor) -> bool:
    """Non-overlapping and dense in some dimension order (contiguous, channels_last, ...)."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def flat_views(p, g, m, v) -> tuple[Tensor, ...] | None:
    """1-D views of the four tensors' memory, element i of each being the same logical element; None where
    that cannot be done without a copy (a strided param, or a grad whose layout differs from the param's)."""
    if all(t.is_contiguous() for t in (p, g, m, v)):
        return tuple(t.view(-1) for t in (p, g, m, v))
    if _is_dense(p) and all(t.stride() == p.stride() for t in (g, m, v)):
        return tuple(t.as_strided((t.numel(),), (1,)) for t in (p, g, m, v))
    return None


def compiled_blend_step(params, grads, exp_avgs, exp_avg_sqs, s: StepScalars, scalars: FusedScalars) -> None:
    """The blend, one compiled pass per tensor; falls back to ``foreach_step`` where it must."""
    global _compile_failed
    coefs = scalars.update(s)
    leftover = []
    for i, tensors in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        if tensors[0].numel() == 0:
            continue
        flat = flat_views(*tensors)
        if flat is None or _compile_failed:
            leftover.append(tensors)
            continue
        try:
            _get_compiled_blend_step()(*flat, *coefs, s.maximize)
        except Exception as err:  # no C++ compiler, unsupported backend, ...: stay correct, lose speed
            # Compilation fails before the graph runs, so this tensor has not been touched yet.
            _compile_failed = True
            warnings.warn(f"DualAdam(fused=True) could not compile its blend step ({type(err).__name__}: "
                          f"{err}); using the foreach path instead.", RuntimeWarning, stacklevel=3)
            leftover.append(tensors)
    if leftover:
        foreach_step(*map(list, zip(*leftover)), s)
