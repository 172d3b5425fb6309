"""Recognize state dicts DualAdam must not load: other optimizers', and DualAdam-named ones from elsewhere.

``torch.optim.Optimizer.load_state_dict`` takes any state dict whose groups have the same sizes. Loading a
torch Adam state dict would then fail on a missing key, and pytorch_optimizer's ``DualAdam`` (coupled weight
decay by default) would load and silently resume a different algorithm. ``check_loadable`` raises a
``ValueError`` instead, naming what the state dict looks like and how to go on.
"""

from __future__ import annotations

import torch

# Group keys that identify other optimizers (torch.optim's names; pytorch_optimizer's DualAdam flags).
_FOREIGN_MARKERS = [
    ({"weight_decouple", "fixed_decay"}, "pytorch_optimizer's DualAdam"),
    ({"decoupled_weight_decay", "amsgrad"}, "torch.optim.Adam/AdamW"),
    ({"amsgrad"}, "torch.optim.Adam/AdamW"),
    ({"momentum", "dampening", "nesterov"}, "torch.optim.SGD"),
    ({"momentum", "alpha", "centered"}, "torch.optim.RMSprop"),
    ({"lr_decay", "initial_accumulator_value"}, "torch.optim.Adagrad"),
    ({"momentum_decay"}, "torch.optim.NAdam"),
    ({"lambd", "t0"}, "torch.optim.ASGD"),
]

_START_FRESH = (
    "To start DualAdam's state fresh (moments at zero, alpha = 1), build DualAdam and do not call "
    "load_state_dict for the optimizer (load the model's weights only). To keep the moments, use "
    "dualadam.optim.load_moments(optimizer, state_dict, step=...) after building DualAdam."
)


def looks_like(group: dict) -> str | None:
    """The optimizer a saved param group looks like, or None if it looks like ours."""
    for keys, name in _FOREIGN_MARKERS:
        if keys & group.keys() == keys:
            return name
    if "switch_rate" not in group:
        return "another optimizer (no 'switch_rate' in its param groups)"
    return None


def check_loadable(state_dict: dict) -> None:
    """Raise ValueError unless every saved param group is DualAdam's own."""
    for index, group in enumerate(state_dict.get("param_groups", [])):
        name = looks_like(group)
        if name is None:
            continue
        detail = _pytorch_optimizer_detail(group) if name == "pytorch_optimizer's DualAdam" else ""
        raise ValueError(f"load_state_dict: param group {index} looks like a state dict of {name}, not of "
                         f"dualadam's DualAdam (keys: {sorted(k for k in group if k != 'params')}).{detail} "
                         + _START_FRESH)


def _pytorch_optimizer_detail(group: dict) -> str:
    settings = f"weight_decay={group.get('weight_decay')}, weight_decouple={group.get('weight_decouple')}, " \
               f"fixed_decay={group.get('fixed_decay')}"
    if same_update_as_ours(group):
        return (f" Its settings ({settings}) give our update, but its state dict does not carry our settings "
                "(schedule, maximize), so it is not loaded as if it were ours.")
    return (f" Its settings ({settings}) are not ours: this package implements only decoupled weight decay "
            "scaled by lr, so resuming from it would silently follow a different algorithm.")


def same_update_as_ours(group: dict) -> bool:
    """pytorch_optimizer's DualAdam follows our update when its weight decay is decoupled and lr-scaled."""
    return group.get("weight_decay", 0) == 0 or (group.get("weight_decouple") and not group.get("fixed_decay"))


def load_moments(optimizer, state_dict: dict, step: int | None = None) -> None:
    """Start a freshly built DualAdam from another Adam-type optimizer's moments (torch Adam/AdamW,
    pytorch_optimizer's DualAdam): copies ``exp_avg`` and ``exp_avg_sq`` param by param, matching params by
    position as ``load_state_dict`` does, and sets the global step to ``step`` (default: the saved step
    count; it sets alpha and the bias corrections). Hyperparameters stay the ones DualAdam was built with.
    """
    saved_groups = state_dict["param_groups"]
    if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError("load_moments: the saved param groups' sizes differ from the optimizer's; build "
                         "DualAdam with the same param groups in the same order")
    saved_steps = []
    for saved, group in zip(saved_groups, optimizer.param_groups):
        for index, p in zip(saved["params"], group["params"]):
            saved_state = state_dict["state"].get(index, {})
            if "exp_avg" not in saved_state:
                continue
            state = optimizer.state[p]
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = saved_state[key].detach().to(device=p.device, dtype=p.dtype).clone()
            if "step" in saved_state:
                saved_steps.append(int(saved_state["step"]))
        if "step" in saved:
            saved_steps.append(int(saved["step"]))
    count = max(saved_steps, default=0) if step is None else step
    optimizer._host_counts.forget()
    for group in optimizer.param_groups:
        group["step"].fill_(count)
        group["inverse_adam_rate"].fill_(optimizer._alpha(group, count))
        if group["bias_correction"] == "per_parameter":
            for p in group["params"]:
                if "exp_avg" in optimizer.state[p]:
                    optimizer.state[p]["step"] = torch.tensor(float(count), dtype=torch.float64)
