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
  a chunk of ``CHUNK`` flattened 1-D tensors with dynamic lengths, called per chunk: its graphs do not
  depend on the number of tensors, their shapes or the param groups. Every scalar, betas and eps included,
  arrives as a 0-d tensor, so nothing recompiles as alpha, the bias corrections or a scheduler's
  lr/momentum move.
- ``traced_step``: what every path runs when the caller compiles ``optimizer.step()`` itself. The scalars
  are 0-d tensors computed in the graph from the step tensor, and the update has no Python branch on alpha
  (``alpha = 0`` makes the inverse term exactly 0), so both phases share one graph.

``DualAdam._update`` is the one place that picks among them.
"""

from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from dualadam.optim.direct_compile import MAX_DIRECT_NUMEL, DirectCompiled

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
    """The update inside a graph the caller compiles (``s.step`` is a 0-d tensor): one graph for both phases.
    Every coefficient becomes a 0-d tensor: a float hyperparameter that dynamo has made a graph input
    (one a scheduler changes) would otherwise be specialized again by ops with Scalar arguments."""
    coefs = [c if isinstance(c, Tensor) else torch.zeros_like(s.step) + c for c in _coefficients(s)]
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        blend_one(p, g, m, v, *coefs, s.maximize)


def _scalar_dtype(dtype: torch.dtype) -> torch.dtype:
    # Scalars in the param dtype keep fp32/fp64 kernels at full speed and precision; bf16/fp16 scalars
    # would round lr * alpha / bc1 to 3 significant digits, so low-precision params get fp32 scalars.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def blend_chunk(tensors: list[Tensor], constants: tuple) -> None:
    """``blend_one`` over a chunk: ``tensors`` is ``[*ps, *gs, *ms, *vs, *coefs]`` (``CHUNK`` flat tensors
    each, then the eight 0-d coefficients), ``constants`` is ``(maximize,)``."""
    n = (len(tensors) - len(BlendBuffers.NAMES)) // 4
    coefs = tensors[4 * n:]
    for i in range(n):
        blend_one(*tensors[i:4 * n:n], *coefs, *constants)


# Tensors per compiled call: fewer calls against a larger graph and a longer cold compile. Measured on a
# 2-core CPU for the 240-tensor LoRA set, fused blend vs torch's fused Adam under load: 8 -> 1.38x,
# 16 -> 1.14x, 32 -> 1.13x, with the cold compile growing 1 : 1.6 : 2.4. `make bench-optim` tracks the result.
CHUNK = 16
_compiled_blend_step = None
_compile_failed = False


def _get_compiled_blend_step():
    # Dynamic lengths: one graph serves every length >= 2 (dynamo specializes 0 and 1, so shorter tensors
    # go the foreach way), and the number of graphs depends on dtypes and ``maximize``, never on how many
    # tensors, shapes or param groups there are. After its first call per signature the compiled code is
    # called without dynamo (see ``direct_compile.py``).
    global _compiled_blend_step
    if _compiled_blend_step is None:
        _compiled_blend_step = DirectCompiled(blend_chunk)
    return _compiled_blend_step


def _is_dense(t: Tensor) -> bool:
    """Non-overlapping and dense in some dimension order (contiguous, channels_last, ...)."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _alias_1d(t: Tensor, alias: Tensor | None = None) -> Tensor:
    # A 1-D alias of t's (dense) memory, made with set_ rather than view: dynamo guards on a view's base,
    # its rank and sizes, which would cost a graph per rank, and cannot trace a mutation of a view made under
    # no_grad of a param that requires grad (a second graph, e.g. after ``maximize`` changed, failed so).
    # Reusing ``alias`` saves an allocation.
    alias = torch.empty(0, dtype=t.dtype, device=t.device) if alias is None else alias
    return alias.set_(t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,))


class BlendBuffers:
    """What the compiled blend reuses for one (device, dtype) from step to step: the 0-d scalars, refilled
    in place, and per param 1-D aliases of p, m and v (checked still valid each step; the grad's alias is
    re-pointed each step, since grads are usually new tensors)."""

    NAMES = ("decay", "one_minus_beta1", "beta2", "one_minus_beta2", "inv_sqrt_bc2", "eps", "adam_coef",
             "inverse_coef")

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.scalars = [torch.zeros((), device=device, dtype=_scalar_dtype(dtype)) for _ in self.NAMES]
        self._values: list = [None] * len(self.NAMES)  # what each scalar was last filled with
        self._aliases: dict[int, tuple] = {}
        self.plans: dict[tuple[int, ...], _ChunkPlan] = {}  # per list of params (ids): see ``plan_chunks``
        # What unused chunk slots point at: two elements each (a length dynamo does not specialize),
        # updated harmlessly (v stays >= 0, so d stays finite).
        self.padding = [tuple(torch.zeros(2, dtype=dtype, device=device) for _ in range(4)) for _ in range(CHUNK)]

    def update(self, s: StepScalars) -> list[Tensor]:
        """Refills the scalars whose value changed since the last refill: most steps that is 3 of 8 (the
        bias corrections and alpha move; betas and eps do not), ~1.7 us a fill on a CPU, per param group."""
        values = _coefficients(s)
        for i, (tensor, value, last) in enumerate(zip(self.scalars, values, self._values)):
            if value != last:
                tensor.fill_(value)
                self._values[i] = value
        return self.scalars

    def flat(self, p, g, m, v) -> tuple[Tensor, ...] | None:
        """1-D aliases of (p, g, m, v), element i of each being the same logical element; None where that
        needs a copy: a strided param, a grad laid out unlike its param or of another dtype, fewer than 2
        elements (dynamo specializes lengths 0 and 1, so those go the foreach way) or more than the compiled
        code is called with directly (``MAX_DIRECT_NUMEL``; rare enough to take the foreach way too)."""
        entry = self._aliases.get(id(p))
        if entry is None or entry[0] is not m or entry[1] is not v or entry[2].data_ptr() != p.data_ptr() \
                or entry[2].numel() != p.numel():
            if not 2 <= p.numel() <= MAX_DIRECT_NUMEL or not _is_dense(p) or m.stride() != p.stride() or v.stride() != p.stride() \
                    or m.dtype != p.dtype or v.dtype != p.dtype:
                return None
            entry = (m, v, _alias_1d(p), _alias_1d(m), _alias_1d(v), torch.empty(0, dtype=g.dtype, device=g.device))
            self._aliases[id(p)] = entry
        if g.stride() != p.stride() or g.dtype != p.dtype:
            return None
        return entry[2], _alias_1d(g, entry[5]), entry[3], entry[4]


class _ChunkPlan:
    """One list of contiguous params cut into chunks for the compiled call: per chunk its argument list with
    the 1-D aliases of p, m, v, the padding and the coefficients in place; only the grads change from step to
    step. Once the compiled code is directly callable a chunk keeps it as a ``BoundCall`` that takes the
    grads as they are. Valid while the params' memory and their state tensors stay the same."""

    def __init__(self, params, exp_avgs, exp_avg_sqs, buffers: BlendBuffers):
        self.params_ptrs = [p.data_ptr() for p in params]
        self.exp_avgs, self.exp_avg_sqs = list(exp_avgs), list(exp_avg_sqs)
        self.args, self.grad_slots = [], []
        for start in range(0, len(params), CHUNK):
            stop = min(start + CHUNK, len(params))
            pad = buffers.padding[stop - start:]
            args = []
            for k, tensors in enumerate((params, None, exp_avgs, exp_avg_sqs)):
                args += [None] * (stop - start) if tensors is None else [_alias_1d(t) for t in tensors[start:stop]]
                args += [slot[k] for slot in pad]
            self.args.append(args + buffers.scalars)
            self.grad_slots.append((start, stop))
        self.bound_signature = None

    def valid(self, params, exp_avgs, exp_avg_sqs) -> bool:
        return ([p.data_ptr() for p in params] == self.params_ptrs
                and all(map(operator.is_, exp_avgs, self.exp_avgs))
                and all(map(operator.is_, exp_avg_sqs, self.exp_avg_sqs)))

    def run(self, grads, compiled: DirectCompiled, constants: tuple, signature) -> None:
        """One step: every chunk's compiled call. A chunk not yet bound is called with 1-D aliases of its grads
        (its first call compiles, or finds the graph compiled) and bound after."""
        if signature != self.bound_signature:  # e.g. ``maximize`` changed: other compiled code
            self.bound, self.bound_signature = [None] * len(self.args), signature
        for i, (start, stop) in enumerate(self.grad_slots):
            self.chunks_run = i  # where a failing call leaves the step (``compiled_blend_step`` goes on there)
            bound = self.bound[i]
            if bound is not None:
                bound(grads[start:stop])
                continue
            args = self.args[i]
            args[CHUNK:CHUNK + stop - start] = [_alias_1d(g) for g in grads[start:stop]]
            try:
                compiled(args, constants, signature)
                self.bound[i] = compiled.bind(args, signature, range(CHUNK, CHUNK + stop - start))
            finally:
                args[CHUNK:CHUNK + stop - start] = [None] * (stop - start)  # do not keep the grads alive


def plan_chunks(params, grads, exp_avgs, exp_avg_sqs, buffers: BlendBuffers) -> _ChunkPlan | None:
    """The common case of a step, with no per-tensor sorting: every param, moment and grad contiguous and of
    the params' dtype, every param of 2 to ``MAX_DIRECT_NUMEL`` elements. Then the chunk plan for this list
    of params, else None (``compiled_blend_step`` then sorts the tensors one by one). A grad always has its
    param's shape, dtype and device (autograd and ``Tensor.grad``'s setter enforce it), not its layout."""
    if not all(map(Tensor.is_contiguous, grads)):
        return None
    key = tuple(map(id, params))
    plan = buffers.plans.get(key)
    if plan is None or not plan.valid(params, exp_avgs, exp_avg_sqs):
        if not all(2 <= p.numel() <= MAX_DIRECT_NUMEL and p.is_contiguous() and m.is_contiguous()
                   and v.is_contiguous() and p.dtype == m.dtype == v.dtype == g.dtype == buffers.dtype
                   for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs)):
            return None
        plan = buffers.plans[key] = _ChunkPlan(params, exp_avgs, exp_avg_sqs, buffers)
    return plan


def _chunk_calls(params, grads, exp_avgs, exp_avg_sqs, buffers: BlendBuffers):
    """Where the params are not all planned: the compiled calls' argument lists, each with the (p, g, m, v)
    it updates, and the (p, g, m, v) that must go the foreach way."""
    flat, leftover = [], []
    for four in zip(params, grads, exp_avgs, exp_avg_sqs):
        aliases = buffers.flat(*four)
        if aliases is None:
            leftover.append(four)
        else:
            flat.append((aliases, four))
    calls = []
    for start in range(0, len(flat), CHUNK):
        chunk = [aliases for aliases, _ in flat[start:start + CHUNK]] + buffers.padding[len(flat[start:start + CHUNK]):]
        calls.append(([t for slot in zip(*chunk) for t in slot] + buffers.scalars,
                      [four for _, four in flat[start:start + CHUNK]]))
    return calls, leftover


def compiled_blend_step(params, grads, exp_avgs, exp_avg_sqs, s: StepScalars, buffers: BlendBuffers) -> None:
    """The blend, one compiled pass per chunk of tensors; falls back to ``foreach_step`` where it must."""
    global _compile_failed
    buffers.update(s)
    if _compile_failed:
        foreach_step(params, grads, exp_avgs, exp_avg_sqs, s)
        return
    compiled = _get_compiled_blend_step()
    constants = (s.maximize,)
    signature = (constants, buffers.device, buffers.dtype)  # every tensor of a call has the params' dtype
    plan = plan_chunks(params, grads, exp_avgs, exp_avg_sqs, buffers)
    calls, leftover = ([], []) if plan is not None else _chunk_calls(params, grads, exp_avgs, exp_avg_sqs, buffers)
    i = 0
    try:
        if plan is not None:
            plan.run(grads, compiled, constants, signature)
        for i, (args, _) in enumerate(calls):
            compiled(args, constants, signature)
    except Exception as err:  # no C++ compiler, unsupported backend, ...: stay correct, lose speed
        # Compilation fails before the graph runs, so the failing chunk and those after it are untouched.
        _compile_failed = True
        warnings.warn(f"DualAdam(fused=True) could not compile its blend step ({type(err).__name__}: "
                      f"{err}); using the foreach path instead.", RuntimeWarning, stacklevel=3)
        if plan is not None:
            leftover = list(zip(params, grads, exp_avgs, exp_avg_sqs))[plan.grad_slots[plan.chunks_run][0]:]
        else:
            leftover += [four for _, fours in calls[i:] for four in fours]
    if leftover:
        foreach_step(*map(list, zip(*leftover)), s)
