"""Register DualAdam and InvAdam with timm, so ``timm.optim.create_optimizer_v2(model, 'dualadam')`` works.

timm's factory then owns the param-group policy (no weight decay on biases and norm layers, layer-wise decay)
exactly as for its built-in optimizers.
"""

from __future__ import annotations

from dualadam.optim.dualadam import DualAdam, InvAdam

OPTIMIZER_DESCRIPTIONS = {
    "dualadam": (DualAdam, "Adam blended with its inverse, handing over to Adam linearly (arXiv 2603.07122)"),
    "invadam": (InvAdam, "Inverse Adam: m_hat * (sqrt(v_hat) + eps) instead of m_hat / (sqrt(v_hat) + eps)"),
}


def register_with_timm() -> None:
    """Idempotent, so a re-import (or a second call) does not make timm warn about overwriting."""
    from timm.optim._optim_factory import OptimInfo, default_registry

    registered = set(default_registry.list_optimizers())
    for name, (cls, description) in OPTIMIZER_DESCRIPTIONS.items():
        if name in registered:
            continue
        default_registry.register(OptimInfo(name=name, opt_class=cls, description=description, has_betas=True))
