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
- ``blend_one``: one pass over memory for the blend (alpha > 0), one tensor with every scalar a 0-d tensor.
  ``fused_blend.py`` compiles it over chunks of flattened tensors of all param groups at once (``fused=True``).
- ``traced_step``: what every path runs when the caller compiles ``optimizer.step()`` itself. The scalars
  are 0-d tensors computed in the graph from the step tensor, and the update has no Python branch on alpha
  (``alpha = 0`` makes the inverse term exactly 0), so both phases share one graph.

``DualAdam._update`` is the one place that picks among them.
"""

from __future__ import annotations

import math
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
        return 1.0 - _power(self.beta1, self.step)

    @property
    def bias_correction2(self) -> Scalar:
        return 1.0 - _power(self.beta2, self.step)

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


def _power(base: Scalar, step: int | Tensor) -> Scalar:
    if isinstance(step, Tensor) and not isinstance(base, Tensor):
        # Same reason as in traced_step: torch.pow(float, Tensor) would specialize a changing beta.
        base = torch.zeros_like(step) + base
    return base**step


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


def fused_adamw_step(params, grads, exp_avgs, exp_avg_sqs, s: StepScalars, step: Tensor) -> None:
    """Exactly the alpha == 0 update. ``step``: a float32 0-d tensor on the params' device, refilled here;
    the kernel only reads it, so one serves every param."""
    step.fill_(s.step)
    torch._fused_adamw_(
        params, grads, exp_avgs, exp_avg_sqs, [], [step] * len(params),
        lr=s.lr, beta1=s.beta1, beta2=s.beta2, weight_decay=s.weight_decay, eps=s.eps,
        amsgrad=False, maximize=s.maximize,
    )


# ---------------------------------------------------------------------------------------------------------
# the blend as one pass over each tensor: compiled over chunks (fused_blend.py) or traced by the caller


def blend_one(p, g, m, v, decay, one_minus_beta1, beta2, one_minus_beta2, inv_sqrt_bc2, eps, adam_coef,
              inverse_coef, maximize: bool) -> None:
    """One tensor's update with every scalar a 0-d tensor (or a float), and no branch on alpha."""
    if maximize:
        g = -g
    m.lerp_(g, one_minus_beta1)
    v.mul_(beta2).add_(one_minus_beta2 * g * g)
    d = v.sqrt() * inv_sqrt_bc2 + eps
    p.mul_(decay).add_(adam_coef * m / d + inverse_coef * m * d)


def blend_coefficients(s: StepScalars) -> tuple:
    """The eight scalars ``blend_one`` takes after the tensors, in its order."""
    return (s.decay, 1.0 - s.beta1, s.beta2, 1.0 - s.beta2, s.inv_sqrt_bias_correction2, s.eps, s.adam_coef,
            s.inverse_coef)


def traced_step(params, grads, exp_avgs, exp_avg_sqs, s: StepScalars) -> None:
    """The update inside a graph the caller compiles (``s.step`` is a 0-d tensor): one graph for both phases.
    Every coefficient becomes a 0-d tensor: a float hyperparameter that dynamo has made a graph input
    (one a scheduler changes) would otherwise be specialized again by ops with Scalar arguments."""
    coefs = [c if isinstance(c, Tensor) else torch.zeros_like(s.step) + c for c in blend_coefficients(s)]
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        blend_one(p, g, m, v, *coefs, s.maximize)
