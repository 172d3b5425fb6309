"""A ``torch.compile``d function whose compiled code is called directly after the first call, without dynamo.

Why. The fused blend calls one small compiled function once per chunk of tensors, several times a step.
Through dynamo every call pays for its guard evaluation and frame handling: measured ~0.25-0.5 ms a call
on a CPU (8 tensors of 2 elements; the kernel itself takes ~1 us), against ~0.05 ms for calling the same
inductor-compiled code directly. At 8 calls per ResNet-18 step, or 30 for a 240-tensor LoRA set (chunks
of 8 tensors then), that overhead alone put the fused blend at 1.26x-2.7x torch's fused Adam, whose kernel
time it matches.

How. The first call for a *signature* goes through ``torch.compile`` as usual (dynamo traces it, inductor
compiles it, the call updates the tensors) with a backend that compiles as the default one does
(``torch._inductor.compile``, without the generated code's size asserts) and keeps what it returns,
together with the order in which the graph takes its inputs: each tensor, and for each dynamic length the
length of the tensor it belongs to. Later calls with the same signature call that compiled code with the
inputs in that order.

Why skipping the guards is safe here. The caller promises that calls with one signature differ only in
what the graph already treats as dynamic: the *values* of 0-d scalars and the lengths of the 1-D tensors.
Everything else dynamo guards on is fixed by construction, and checked where it is built (``fused_blend.py``):
the number of tensors (a chunk is padded to its size), each one a 1-D, stride-1 tensor of >= 2 elements
(dynamo specializes lengths 0 and 1) and < 2**31 elements (where a GPU kernel may index with int32),
not requiring grad, no two inputs sharing memory, and the dtypes, device and the Python constants, which
make up the signature. Dynamo's own shape guards for this function are empty (``use_duck_shape=False``
while tracing, so equal lengths do not become one symbol). Anything the input order cannot be read from
leaves that signature on the ordinary dynamo path: slower, never wrong.

Bound calls. A caller that calls again and again with mostly the same tensors (the fused blend: the same
params and moments every step, new grads) binds the call once (``bind``): the input list is built once and
only the tensors that change are put in before each call (``BoundCall``). A tensor put in that way may be
any dense tensor, of any rank and layout, with the dtype, device and number of elements of the one it
replaces and its elements in the order the caller means: the generated code reads a tensor input only
through its data pointer (size asserts are off), so the caller is spared a 1-D alias per tensor per step
(~1 us each, 0.25 ms a step for 240 LoRA tensors).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor

MAX_DIRECT_NUMEL = 2**31 - 1  # longer tensors take the guarded path (int32 indexing on GPUs stops there)


def _no_duck_sizing():
    # Without duck sizing, equal lengths get no equality guard (a guard per pattern of equal lengths would
    # mean a graph per pattern). Scoped to the traced calls: the setting is read when a graph is traced.
    return torch.fx.experimental._config.patch(use_duck_shape=False)


class DirectCompiled:
    """``fn(tensors, constants)`` compiled once per signature and then called without dynamo.

    ``tensors`` is a flat list (1-D tensors and 0-d scalars), ``constants`` a tuple of hashable Python
    values the function branches on. The signature: the constants, and each tensor's dtype and device."""

    def __init__(self, fn: Callable[[list[Tensor], tuple], None]):
        self._traced = torch.compile(fn, fullgraph=True, dynamic=True, backend=self._compile)
        self._direct: dict[Hashable, tuple[Callable, list[tuple[int, bool]]]] = {}
        self._last_compiled = None

    def _compile(self, gm: torch.fx.GraphModule, example_inputs: list):
        # No size/stride asserts in the generated code: a direct call's inputs are 1-D and stride 1 by
        # construction, and a guarded call's by dynamo's guards. They cost ~17% of a direct call (4 tensors,
        # 19.5 -> 16.2 us on a 2-core CPU); inductor's C++ wrapper was slower still (75 us).
        compiled = torch._inductor.compile(gm, example_inputs, options={"size_asserts": False})
        self._last_compiled = (gm, list(example_inputs), compiled)
        return compiled

    @staticmethod
    def signature(tensors: list[Tensor], constants: tuple) -> Hashable:
        return constants, tuple((t.dtype, t.device) for t in tensors)

    def __call__(self, tensors: list[Tensor], constants: tuple, signature: Hashable | None = None) -> None:
        signature = self.signature(tensors, constants) if signature is None else signature
        direct = self._direct.get(signature)
        if direct is not None:
            compiled, order = direct
            compiled(*[tensors[i].shape[0] if is_length else tensors[i] for i, is_length in order])
            return
        self._last_compiled = None
        with _no_duck_sizing():
            self._traced(tensors, constants)
        if self._last_compiled is not None:  # None: dynamo reused a graph it had compiled before
            gm, example_inputs, compiled = self._last_compiled
            self._last_compiled = None  # it holds this call's tensors (a step's grads)
            order = _input_order(gm, example_inputs, tensors)
            if order is not None:
                self._direct[signature] = (compiled, order)

    def directly_callable(self, signature: Hashable) -> bool:
        return signature in self._direct

    def bind(self, tensors: list[Tensor], signature: Hashable, swapped: Sequence[int]) -> BoundCall | None:
        """After a first call with ``signature``: the compiled code bound to ``tensors``, for a caller that
        calls it again with the tensors at the indices ``swapped`` replaced (see ``BoundCall``); None while
        the signature is not directly callable."""
        direct = self._direct.get(signature)
        if direct is None:
            return None
        compiled, order = direct
        inputs = [tensors[i].shape[0] if is_length else tensors[i] for i, is_length in order]
        position = {i: pos for pos, (i, is_length) in enumerate(order) if not is_length}
        if any(i not in position for i in swapped):
            return None
        return BoundCall(compiled, inputs, [position[i] for i in swapped])


class BoundCall:
    """The compiled code with its inputs in place, called with replacements for a few of them: each one
    dense, with the dtype, device and number of elements of the tensor it replaces and its elements in the
    caller's order (the caller checks; see the module docstring).
    The replacements are let go after the call, so a bound call does not keep freed grads alive."""

    __slots__ = ("_compiled", "_inputs", "_positions")

    def __init__(self, compiled: Callable, inputs: list, positions: list[int]):
        self._compiled, self._inputs, self._positions = compiled, inputs, positions
        for pos in positions:
            inputs[pos] = None

    def __call__(self, replacements: Sequence[Tensor]) -> None:
        inputs = self._inputs
        for pos, tensor in zip(self._positions, replacements):
            inputs[pos] = tensor
        try:
            self._compiled(*inputs)
        finally:
            for pos in self._positions:
                inputs[pos] = None


def _input_order(gm: torch.fx.GraphModule, example_inputs: list, tensors: list[Tensor]):
    """For each graph input, (index into ``tensors``, whether it is that tensor's length); None where an input
    is neither one of the tensors nor the length of one, or the order does not reproduce the example."""
    placeholders = [node for node in gm.graph.nodes if node.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        return None
    position = {id(t): i for i, t in enumerate(tensors)}
    length_owner = {}
    for node, example in zip(placeholders, example_inputs):
        fake = node.meta.get("example_value")
        if isinstance(example, Tensor) and id(example) in position and fake is not None and fake.dim() == 1:
            length_owner.setdefault(str(fake.shape[0]), position[id(example)])
    order = []
    for node, example in zip(placeholders, example_inputs):
        if isinstance(example, Tensor):
            index = position.get(id(example))
            if index is None:
                return None
            order.append((index, False))
        else:
            index = length_owner.get(str(node.meta.get("example_value")))
            if index is None:
                return None
            order.append((index, True))
    rebuilt = [tensors[i].shape[0] if is_length else tensors[i] for i, is_length in order]
    if any((a != b) if is_length else (a is not b)
           for a, b, (_, is_length) in zip(rebuilt, example_inputs, order)):
        return None
    return order
