"""Curvature of the training loss at a solution: top Hessian eigenvalue (Lanczos) and trace (Hutchinson).

Both use only Hessian-vector products by double backward (Pearlmutter's trick: ``H v = d(g . v)/dtheta``), so
the Hessian is never formed. ``H`` is the Hessian, with respect to every trainable parameter, of the mean loss
over a fixed list of batches, taken in eval mode (batch norm uses its running statistics, so the loss is one
deterministic function of the parameters). Reuse the same batches for every measurement you compare.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dualadam.analysis.evaluation import LossFn, check_batches, eval_mode, trainable_parameters
from dualadam.analysis.progress import Stage, Tick, no_stage, tick_of

TOP_EIGENVALUE = "sharpness/hessian_top_eig"
TRACE = "sharpness/hessian_trace"
TRACE_STDERR = "sharpness/hessian_trace_stderr"
SHARPNESS_KEYS = (TOP_EIGENVALUE, TRACE, TRACE_STDERR)


def hessian_vector_product(model: nn.Module, loss_fn: LossFn, batches: Sequence,
                           vector: Sequence[Tensor]) -> list[Tensor]:
    """``H v``, one tensor per trainable parameter (``vector`` is shaped the same way).

    Uses the model's current train/eval mode; the measurements below wrap it in :func:`eval_mode`.
    """
    check_batches(batches)
    params = trainable_parameters(model)
    product = [torch.zeros_like(p) for p in params]
    for batch in batches:
        with torch.enable_grad():
            grads = torch.autograd.grad(loss_fn(model, batch), params, create_graph=True, allow_unused=True)
            terms = [(g * v).sum() for g, v in zip(grads, vector) if g is not None and g.requires_grad]
            if not terms:  # the gradient does not depend on the parameters: zero Hessian on this batch
                continue
            columns = torch.autograd.grad(torch.stack(terms).sum(), params, allow_unused=True)
        for total, column in zip(product, columns):
            if column is not None:
                total.add_(column.detach())
    return [total.div_(len(batches)) for total in product]


def _flat_operator(model: nn.Module, loss_fn: LossFn, batches: Sequence):
    """The HVP as a map on flat vectors (what Lanczos works with), and the parameters it acts on."""
    params = trainable_parameters(model)
    sizes = [p.numel() for p in params]

    def matvec(flat: Tensor) -> Tensor:
        vector = [chunk.view_as(p) for chunk, p in zip(flat.split(sizes), params)]
        return torch.cat([hv.reshape(-1) for hv in hessian_vector_product(model, loss_fn, batches, vector)])

    return matvec, params


@dataclass(frozen=True)
class TopEigenpair:
    eigenvalue: float   # largest algebraic Ritz value
    residual: float     # ||H y - eigenvalue * y|| for the unit Ritz vector y: bounds the eigenvalue error
    iterations: int


def lanczos_top_eigenvalue(matvec, start: Tensor, *, iters: int, tol: float,
                           progress: Tick | None = None) -> TopEigenpair:
    """Largest eigenvalue of a symmetric operator by Lanczos with full reorthogonalization.

    Stops when the Ritz residual is at most ``tol * |eigenvalue|`` (then some eigenvalue lies within that
    distance), when the Krylov space becomes invariant or fills the whole space, or after ``iters`` products. Keeps ``iters + 1``
    vectors of ``start``'s size in memory. ``progress()`` is called after each product.
    """
    iters = min(iters, start.numel())  # the Krylov space cannot outgrow the space itself
    basis = start.new_zeros(iters + 1, start.numel())
    basis[0] = start / start.norm()
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(iters):
        w = matvec(basis[j])
        tick_of(progress)()
        alphas.append(float(w @ basis[j]))
        for _ in range(2):  # twice is enough to keep the basis orthogonal in floating point
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        ritz_values, ritz_vectors = torch.linalg.eigh(_tridiagonal(alphas, betas))
        top, residual = float(ritz_values[-1]), beta * abs(float(ritz_vectors[-1, -1]))
        scale = max(abs(a) for a in alphas) + max(betas, default=0.0)
        if residual <= tol * abs(top) or beta <= 1e-10 * scale or j + 1 == start.numel():
            return TopEigenpair(top, residual, j + 1)
        betas.append(beta)
        basis[j + 1] = w / beta
    return TopEigenpair(top, residual, iters)


def _tridiagonal(alphas: list[float], betas: list[float]) -> Tensor:
    matrix = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        matrix += torch.diag(off, 1) + torch.diag(off, -1)
    return matrix


def hessian_top_eigenvalue(model: nn.Module, loss_fn: LossFn, batches: Sequence, *, iters: int = 20,
                           tol: float = 1e-3, seed: int = 0, progress: Tick | None = None) -> float:
    """Largest (algebraic, not absolute) eigenvalue of the loss Hessian, by Lanczos from a ``seed``-ed start.

    ``tol`` is relative: the result is within about ``tol * |value|`` of an eigenvalue when it converges, and a
    warning names the residual when ``iters`` Hessian-vector products (each a pass over ``batches``) are not
    enough. ``progress()`` is called after each product.
    """
    if iters < 1:
        raise ValueError(f"iters={iters}: Lanczos needs at least one Hessian-vector product")
    with eval_mode(model):
        matvec, params = _flat_operator(model, loss_fn, batches)
        size = sum(p.numel() for p in params)
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(size, generator=generator, dtype=params[0].dtype).to(params[0].device)
        result = lanczos_top_eigenvalue(matvec, start, iters=iters, tol=tol, progress=progress)
    if result.residual > tol * abs(result.eigenvalue) and result.iterations == iters:
        warnings.warn(f"Lanczos did not reach tol={tol} in iters={iters}: top eigenvalue {result.eigenvalue:.6g} "
                      f"has residual {result.residual:.3g}; raise iters for a tighter value", RuntimeWarning,
                      stacklevel=2)
    return result.eigenvalue


def _rademacher_like(params: Sequence[Tensor], generator: torch.Generator) -> list[Tensor]:
    return [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in params]


def hessian_trace(model: nn.Module, loss_fn: LossFn, batches: Sequence, *, samples: int = 50,
                  seed: int = 0, progress: Tick | None = None) -> tuple[float, float]:
    """Hutchinson's estimate of ``tr H`` with Rademacher probes, and its standard error.

    Each probe ``v`` (entries +-1, drawn from ``seed``) gives the unbiased sample ``v . H v``; the estimate is
    their mean and the standard error their sample standard deviation over ``sqrt(samples)``.
    ``progress()`` is called after each probe.
    """
    if samples < 2:
        raise ValueError(f"samples={samples}: a standard error needs at least 2 Rademacher probes")
    generator = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        params = trainable_parameters(model)
        values = []
        for _ in range(samples):
            probe = _rademacher_like(params, generator)
            product = hessian_vector_product(model, loss_fn, batches, probe)
            values.append(sum(float((v * hv).sum(dtype=torch.float64)) for v, hv in zip(probe, product)))
            tick_of(progress)()
    values_t = torch.tensor(values, dtype=torch.float64)
    return float(values_t.mean()), float(values_t.std()) / math.sqrt(samples)


def measure_sharpness(model: nn.Module, loss_fn: LossFn, batches: Sequence, *, eig_iters: int = 20,
                      eig_tol: float = 1e-3, trace_samples: int = 50, seed: int = 0,
                      stage: Stage = no_stage) -> dict[str, float]:
    """The flatness metrics a run records, under the keys in ``SHARPNESS_KEYS``.

    Cost: up to ``eig_iters + trace_samples`` Hessian-vector products, each a forward and a double backward
    over every batch. ``stage`` reports the two stages' progress (see :mod:`dualadam.analysis.progress`).
    """
    with stage("top Hessian eigenvalue (Lanczos iterations)", eig_iters) as tick:
        top = hessian_top_eigenvalue(model, loss_fn, batches, iters=eig_iters, tol=eig_tol, seed=seed,
                                     progress=tick)
    with stage("Hessian trace (Hutchinson probes)", trace_samples) as tick:
        trace, stderr = hessian_trace(model, loss_fn, batches, samples=trace_samples, seed=seed, progress=tick)
    return {TOP_EIGENVALUE: top, TRACE: trace, TRACE_STDERR: stderr}
