"""Where and how the arithmetic runs: device, mixed precision, memory format, compilation, seeding.

``trainer.precision=auto`` means bf16 autocast on CUDA (no grad scaler, so no per-step host sync) and full fp32
elsewhere; ``fp16`` reproduces the authors' autocast + ``GradScaler``.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch

PRECISIONS = ("auto", "32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """Resolved execution settings; ``rank``/``world_size`` are the data-parallel position (``distributed``:
    one process per GPU under DDP, else rank 0 of 1)."""

    device: torch.device
    precision: str          # "32", "bf16" or "fp16" (never "auto")
    channels_last: bool
    compile: bool
    fused_optimizer: bool | str = "auto"  # "auto": the optimizer's fused path on CUDA, where it has one
    rank: int = 0
    world_size: int = 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for forward passes and losses; a no-op at full precision."""
        if self.precision == "32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype inputs are handed to the model in: autocast's, since its first layer would cast to it."""
        return AUTOCAST_DTYPES.get(self.precision, torch.float32)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_runtime(trainer_cfg) -> Runtime:
    """Turn the ``trainer`` config's ``auto`` values into concrete settings for this machine."""
    device = resolve_device(str(trainer_cfg.device))
    on_cuda = device.type == "cuda"
    precision = str(trainer_cfg.precision)
    if precision == "auto":
        precision = "bf16" if on_cuda else "32"
    channels_last = trainer_cfg.channels_last
    if channels_last == "auto":
        channels_last = on_cuda  # measured no gain on CPU; a clear win for convolutions on tensor cores
    return Runtime(device=device, precision=precision, channels_last=bool(channels_last),
                   compile=bool(trainer_cfg.compile), fused_optimizer=trainer_cfg.get("fused_optimizer", "auto"))


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices). Data order is seeded separately, per epoch, by the loader.

    ``deterministic`` trades speed for bitwise-repeatable GPU kernels; otherwise cuDNN autotunes, as the
    authors' ``seed_torch`` did.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def progress_enabled(setting) -> bool:
    """``auto``: progress bars in an interactive terminal, none in CI logs or when stderr is redirected."""
    if setting == "auto":
        return sys.stderr.isatty() and not os.environ.get("CI")
    return bool(setting)
