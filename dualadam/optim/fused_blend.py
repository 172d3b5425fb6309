"""The fused blend (``DualAdam(fused=True)`` while alpha > 0): ``blend_one`` compiled once, run over chunks of
flattened tensors of every param group at once.

- **Chunks.** A ``torch.compile``d kernel (``blend_chunk``) takes ``CHUNK`` flattened 1-D tensors with dynamic
  lengths; a step calls it once per chunk. Its graphs depend on dtypes and ``maximize``, never on how many
  tensors, shapes or param groups there are, so the cold compile is one graph whatever the model.
- **Per-slot coefficients.** Each slot of a chunk reads its eight scalars from a coefficient table, one row
  per slot, so one chunk holds tensors of several param groups (each with its own lr, weight decay and, with
  per-parameter bias correction, step count). A step makes ceil(tensors / CHUNK) calls however the tensors
  are grouped: ResNet-18 in 9 param groups takes 4, as in one group. The table is an input, refilled in
  place each step, so nothing recompiles as alpha, the bias corrections or a scheduler's lr/momentum move.
- **Called directly.** After its first call the compiled code is called without dynamo, bound to each chunk's
  params and moments; only the grads are put in per step (``direct_compile.py``).

``compiled_blend_step`` is the entry point; ``DualAdam._update`` decides when it runs.
"""

from __future__ import annotations

import array
import operator
import warnings
from collections import defaultdict
from typing import NamedTuple

import torch
from torch import Tensor

from dualadam.optim.direct_compile import MAX_DIRECT_NUMEL, DirectCompiled
from dualadam.optim.functional import StepScalars, blend_coefficients, blend_one, foreach_step

COEFFICIENTS = 8  # per slot: what ``blend_coefficients`` returns

# Tensors per compiled call: fewer calls against a larger graph and a longer cold compile. Measured on a
# 2-core CPU for the 240-tensor LoRA set, fused blend vs torch's fused Adam under load: 8 -> 1.38x,
# 16 -> 1.14x, 32 -> 1.13x, with the cold compile growing 1 : 1.6 : 2.4. `make bench-optim` tracks the result.
CHUNK = 16
_compiled_blend_step = None
_compile_failed = False


class BlendBucket(NamedTuple):
    """Tensors that share their scalars: one param group's (params, grads, exp_avgs, exp_avg_sqs) of one
    device and dtype, at one step count."""

    tensors: list[list[Tensor]]
    scalars: StepScalars


def blend_chunk(tensors: list[Tensor], constants: tuple) -> None:
    """``blend_one`` over a chunk: ``tensors`` is ``[*ps, *gs, *ms, *vs, table]``, ``CHUNK`` flat tensors each,
    then the 1-D coefficient table (slot i's eight scalars at ``[8 i, 8 i + 8)``); ``constants`` is
    ``(maximize,)``."""
    n = (len(tensors) - 1) // 4
    table = tensors[4 * n]
    for i in range(n):
        blend_one(*tensors[i:4 * n:n], *[table[COEFFICIENTS * i + k] for k in range(COEFFICIENTS)], *constants)


def _get_compiled_blend_step():
    # Dynamic lengths: one graph serves every length >= 2 (dynamo specializes 0 and 1, so shorter tensors
    # go the foreach way).
    global _compiled_blend_step
    if _compiled_blend_step is None:
        _compiled_blend_step = DirectCompiled(blend_chunk)
    return _compiled_blend_step


_TYPECODES = {torch.float32: "f", torch.float64: "d"}  # the C types of the scalar dtypes; the same rounding


def _scalar_dtype(dtype: torch.dtype) -> torch.dtype:
    # Scalars in the param dtype keep fp32/fp64 kernels at full speed and precision; bf16/fp16 scalars
    # would round lr * alpha / bc1 to 3 significant digits, so low-precision params get fp32 scalars.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


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


def _flattenable(p: Tensor, m: Tensor, v: Tensor) -> bool:
    """Whether p, m and v read as 1-D aliases element for element: p dense with 2 to ``MAX_DIRECT_NUMEL``
    elements (dynamo specializes lengths 0 and 1; longer tensors are rare enough to take the foreach way),
    m and v laid out like it and of its dtype."""
    return (2 <= p.numel() <= MAX_DIRECT_NUMEL and _is_dense(p) and m.stride() == v.stride() == p.stride()
            and m.dtype == v.dtype == p.dtype)


class BlendBuffers:
    """What the compiled blend reuses for one (device, dtype) from step to step: the chunk plans, per param
    1-D aliases of p, m and v for the steps no plan covers (checked still valid each step; the grad's alias
    is re-pointed each step, since grads are usually new tensors), and the padding of unused slots."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype, self.scalar_dtype = device, dtype, _scalar_dtype(dtype)
        self._aliases: dict[int, tuple] = {}
        self.plans: dict[tuple, _ChunkPlan] = {}  # per list of params (ids) and its buckets: ``plan_chunks``
        # What unused chunk slots point at: two elements each (a length dynamo does not specialize),
        # updated harmlessly (v stays >= 0, so d stays finite).
        self.padding = [tuple(torch.zeros(2, dtype=dtype, device=device) for _ in range(4)) for _ in range(CHUNK)]

    def coefficient_rows(self, buckets: list[BlendBucket]) -> Tensor:
        """One row of the eight coefficients per bucket, on the device (one host-to-device copy). Built
        through a stdlib ``array``: a quarter of ``torch.tensor(list)``'s time (1.5 us against 5 us)."""
        values = array.array(_TYPECODES[self.scalar_dtype], [c for b in buckets for c in blend_coefficients(b.scalars)])
        rows = torch.frombuffer(values, dtype=self.scalar_dtype).view(len(buckets), COEFFICIENTS)
        return rows.to(self.device, non_blocking=True)  # pageable: staged at once, and no host sync

    def flat(self, p, g, m, v) -> tuple[Tensor, ...] | None:
        """1-D aliases of (p, g, m, v), element i of each being the same logical element; None where that
        needs a copy (see ``_flattenable``; a grad laid out unlike its param or of another dtype) or where
        the compiled call cannot take the param (fewer than 2 or more than ``MAX_DIRECT_NUMEL`` elements)."""
        entry = self._aliases.get(id(p))
        if entry is None or entry[0] is not m or entry[1] is not v or entry[2].data_ptr() != p.data_ptr() \
                or entry[2].numel() != p.numel():
            if not _flattenable(p, m, v):
                return None
            entry = (m, v, _alias_1d(p), _alias_1d(m), _alias_1d(v), torch.empty(0, dtype=g.dtype, device=g.device))
            self._aliases[id(p)] = entry
        if g.stride() != p.stride() or g.dtype != p.dtype:
            return None
        return entry[2], _alias_1d(g, entry[5]), entry[3], entry[4]


class _ChunkPlan:
    """One list of dense params cut into chunks for the compiled call: per chunk its argument list with
    the 1-D aliases of p, m, v, the padding and its part of the coefficient table in place; only the grads
    and the table's values change from step to step. Once the compiled code is directly callable a chunk
    keeps it as a ``BoundCall`` that takes the grads as they are. Valid while the params' memory and their
    state tensors stay the same."""

    def __init__(self, params, exp_avgs, exp_avg_sqs, bucket_of_param: list[int], buffers: BlendBuffers):
        self.params_ptrs = [p.data_ptr() for p in params]
        self.params_strides = [p.stride() for p in params]
        self.params_contiguous = all(p.is_contiguous() for p in params)
        self.exp_avgs, self.exp_avg_sqs = list(exp_avgs), list(exp_avg_sqs)
        starts = range(0, len(params), CHUNK)
        self.table = torch.zeros(len(starts) * CHUNK, COEFFICIENTS, dtype=buffers.scalar_dtype, device=buffers.device)
        self.args, self.grad_slots, bucket_of_slot = [], [], []
        for c, start in enumerate(starts):
            stop = min(start + CHUNK, len(params))
            pad = buffers.padding[stop - start:]
            args = []
            for k, tensors in enumerate((params, None, exp_avgs, exp_avg_sqs)):
                args += [None] * (stop - start) if tensors is None else [_alias_1d(t) for t in tensors[start:stop]]
                args += [slot[k] for slot in pad]
            self.args.append(args + [_alias_1d(self.table[c * CHUNK:(c + 1) * CHUNK])])
            self.grad_slots.append((start, stop))
            bucket_of_slot += bucket_of_param[start:stop] + [0] * len(pad)  # padding reads any finite row
        self.bucket_of_slot = torch.tensor(bucket_of_slot, device=buffers.device)
        self.bound_signature = None

    def valid(self, params, exp_avgs, exp_avg_sqs) -> bool:
        return ([p.data_ptr() for p in params] == self.params_ptrs
                and all(map(operator.is_, exp_avgs, self.exp_avgs))
                and all(map(operator.is_, exp_avg_sqs, self.exp_avg_sqs)))

    def laid_out_like_params(self, grads) -> bool:
        """Whether each grad's memory holds its elements in its param's order (a bound call reads it so)."""
        if self.params_contiguous:
            return all(map(Tensor.is_contiguous, grads))
        return list(map(Tensor.stride, grads)) == self.params_strides

    def run(self, grads, rows: Tensor, compiled: DirectCompiled, constants: tuple, signature) -> None:
        """One step: the table refilled from the buckets' ``rows``, then every chunk's compiled call. A chunk
        not yet bound is called with 1-D aliases of its grads (its first call compiles, or finds the graph
        compiled) and bound after."""
        self.chunks_run = 0  # where a failing call leaves the step (``compiled_blend_step`` goes on there)
        if len(rows) == 1:
            self.table.copy_(rows)  # broadcast: half the time of the general gather
        else:
            torch.index_select(rows, 0, self.bucket_of_slot, out=self.table)
        if signature != self.bound_signature:  # e.g. ``maximize`` changed: other compiled code
            self.bound, self.bound_signature = [None] * len(self.args), signature
        for i, (start, stop) in enumerate(self.grad_slots):
            self.chunks_run = i
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


def _concatenated(buckets: list[BlendBucket]):
    """The buckets' params, grads, exp_avgs and exp_avg_sqs as four lists, and each param's bucket index."""
    if len(buckets) == 1:
        return buckets[0].tensors, [0] * len(buckets[0].tensors[0])
    lists = [[t for b in buckets for t in b.tensors[k]] for k in range(4)]
    return lists, [i for i, b in enumerate(buckets) for _ in b.tensors[0]]


def plan_chunks(params, grads, exp_avgs, exp_avg_sqs, bucket_of_param, buffers: BlendBuffers) -> _ChunkPlan | None:
    """The common case of a step, with no per-tensor sorting: every param dense (contiguous, channels_last,
    ...), its moments and grad laid out like it and of its dtype, every param of 2 to ``MAX_DIRECT_NUMEL``
    elements. Then the chunk plan for this list of params, else None (``compiled_blend_step`` then sorts the
    tensors one by one). A grad always has its param's shape, dtype and device (autograd and
    ``Tensor.grad``'s setter enforce it), not always its layout: that is checked each step."""
    key = (tuple(map(id, params)), tuple(bucket_of_param))
    plan = buffers.plans.get(key)
    if plan is None or not plan.valid(params, exp_avgs, exp_avg_sqs):
        if not all(p.dtype == g.dtype == buffers.dtype and _flattenable(p, m, v)
                   for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs)):
            return None
        plan = buffers.plans[key] = _ChunkPlan(params, exp_avgs, exp_avg_sqs, bucket_of_param, buffers)
    return plan if plan.laid_out_like_params(grads) else None


def _chunk_calls(lists, bucket_of_param, rows: Tensor, buffers: BlendBuffers):
    """Where the params are not all planned: the compiled calls' argument lists, each with the indices of the
    (p, g, m, v) it updates, and the indices of those that must go the foreach way."""
    flat, leftover = [], []
    for i, four in enumerate(zip(*lists)):
        aliases = buffers.flat(*four)
        if aliases is None:
            leftover.append(i)
        else:
            flat.append((aliases, i))
    flat_rows = rows.view(-1)
    calls = []
    for start in range(0, len(flat), CHUNK):
        chunk = flat[start:start + CHUNK]
        slots = [aliases for aliases, _ in chunk] + buffers.padding[len(chunk):]
        rows_of_slots = [bucket_of_param[i] for _, i in chunk] + [0] * (CHUNK - len(chunk))
        index = torch.tensor([COEFFICIENTS * r + k for r in rows_of_slots for k in range(COEFFICIENTS)])
        index = index.to(buffers.device, non_blocking=True)  # ``device=`` would wait for the GPU
        table = torch.index_select(flat_rows, 0, index)
        calls.append(([t for slot in zip(*slots) for t in slot] + [table], [i for _, i in chunk]))
    return calls, leftover


def compiled_blend_step(buckets: list[BlendBucket], buffers: BlendBuffers) -> None:
    """The blend for every bucket of one device, dtype and ``maximize``: one compiled pass per chunk of
    ``CHUNK`` tensors, whatever bucket each comes from; the foreach path where it must."""
    global _compile_failed
    if _compile_failed:
        for bucket in buckets:
            foreach_step(*bucket.tensors, bucket.scalars)
        return
    lists, bucket_of_param = _concatenated(buckets)
    params, grads, exp_avgs, exp_avg_sqs = lists
    compiled = _get_compiled_blend_step()
    constants = (buckets[0].scalars.maximize,)
    signature = (constants, buffers.device, buffers.dtype)  # the params' dtype fixes every input's dtype
    rows = buffers.coefficient_rows(buckets)
    plan = plan_chunks(params, grads, exp_avgs, exp_avg_sqs, bucket_of_param, buffers)
    calls, leftover = ([], []) if plan is not None else _chunk_calls(lists, bucket_of_param, rows, buffers)
    calls_run = 0
    try:
        if plan is not None:
            plan.run(grads, rows, compiled, constants, signature)
        for args, _ in calls:
            compiled(args, constants, signature)
            calls_run += 1
    except Exception as err:  # no C++ compiler, unsupported backend, ...: stay correct, lose speed
        # Compilation fails before the graph runs, so the failing chunk and those after it are untouched.
        _compile_failed = True
        warnings.warn(f"DualAdam(fused=True) could not compile its blend step ({type(err).__name__}: "
                      f"{err}); using the foreach path instead.", RuntimeWarning, stacklevel=3)
        if plan is not None:
            leftover = list(range(plan.grad_slots[plan.chunks_run][0], len(params)))
        else:
            leftover += [j for _, indices in calls[calls_run:] for j in indices]
    if leftover:
        _foreach_by_bucket(leftover, lists, bucket_of_param, buckets)


def _foreach_by_bucket(indices, lists, bucket_of_param, buckets: list[BlendBucket]) -> None:
    by_bucket = defaultdict(list)
    for i in indices:
        by_bucket[bucket_of_param[i]].append(i)
    for b, members in by_bucket.items():
        foreach_step(*([lst[i] for i in members] for lst in lists), buckets[b].scalars)
