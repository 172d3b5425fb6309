"""Register DualAdam and InvAdam with timm, so ``timm.optim.create_optimizer_v2(model, "dualadam")`` works.

timm's factory then owns the param-group policy (no weight decay on biases and norm layers, layer-wise decay)
exactly as for its built-in optimizers. ``import dualadam`` does not register: timm is an optional dependency,
and importing ``timm.optim`` changes process-wide torch settings (see :func:`import_timm_optim`). Call
``dualadam.register_with_timm()`` once; the experiment suite does so where it builds optimizers.
"""

from __future__ import annotations

from types import ModuleType

import torch

from dualadam.optim.dualadam import DualAdam, InvAdam

OPTIMIZER_DESCRIPTIONS = {
    "dualadam": (DualAdam, "Adam blended with its inverse, handing over to Adam linearly (arXiv 2603.07122)"),
    "invadam": (InvAdam, "Inverse Adam: m_hat * (sqrt(v_hat) + eps) instead of m_hat / (sqrt(v_hat) + eps)"),
}


def import_timm_optim() -> ModuleType:
    """``timm.optim``, imported without changing dynamo's ``cache_size_limit``.

    timm's ``kron.py`` sets ``torch._dynamo.config.cache_size_limit = 1_000_000`` when it is imported, for the
    whole process (its Kron optimizer compiles one graph per parameter shape). Left so, a user's own
    ``torch.compile`` would recompile without bound instead of falling back to eager after 8 graphs, and
    recompilation bugs would go unnoticed. We put back whatever value was in force before the import. Only
    timm's Kron is affected: past the limit its compiled helpers run eagerly; Kron users may raise the limit
    themselves.
    """
    limit = torch._dynamo.config.cache_size_limit
    try:
        import timm.optim
    finally:
        torch._dynamo.config.cache_size_limit = limit
    return timm.optim


def register_with_timm() -> ModuleType:
    """Add ``dualadam`` and ``invadam`` to timm's optimizer registry; returns ``timm.optim``.

    Idempotent, so a second call does not make timm warn about overwriting.
    """
    timm_optim = import_timm_optim()
    from timm.optim._optim_factory import OptimInfo, default_registry

    registered = set(default_registry.list_optimizers())
    for name, (cls, description) in OPTIMIZER_DESCRIPTIONS.items():
        if name in registered:
            continue
        default_registry.register(OptimInfo(name=name, opt_class=cls, description=description, has_betas=True))
    return timm_optim
