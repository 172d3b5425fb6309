"""The escape landscape: a double well along one direction, a quadratic valley across it, and its gradient noise.

For a particle at ``x`` in R^d, with ``u`` a unit vector (the barrier direction) and ``s = u . x``:

    L(x) = barrier * (1 - (s / w)^2)^2 + (h_perp / 2) * |x - s u|^2,        w = sqrt(8 * barrier / h)

The minima are at ``s = -w`` (where particles start) and ``s = +w``; both have Hessian
``H = h u u^T + h_perp (I - u u^T)``, so ``h`` is the sharpness of the basin along the barrier. The saddle at
``s = 0`` lies ``barrier`` above the minima, with curvature ``-h / 2`` along ``u``. Sharpness and barrier are
thus set independently: a sharper basin is a narrower one (``w ~ 1 / sqrt(h)``). In 1-D (``d = 1``) the
transverse term vanishes.

Gradient noise, the diffusion-theory model of minibatch SGD (Zhu et al. 2019; Xie et al. 2021, "A Diffusion
Theory for Deep Learning Dynamics"): the minibatch gradient is the full gradient plus

    xi ~ N(0, H_min / B),   independent across steps and particles,

with ``H_min`` the Hessian at the basin's minimum (near a minimum the gradient covariance is the Fisher, which
equals the Hessian for a likelihood loss) and ``B`` the batch size. The covariance is held at its minimum
value over the whole basin, as in the derivations of the escape rate: the Hessian along ``u`` changes sign
between minimum and saddle, and noise that followed ``|L''(s)|`` would vanish at the inflection point and
pin particles behind it. ``xi = H_min^{1/2} z / sqrt(B)`` with ``z`` standard normal.

Many settings run as one tensor: every particle (row) carries its own ``h``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def _diagonal(dim: int) -> Tensor:
    return torch.full((dim,), 1.0 / math.sqrt(dim), dtype=torch.float64)


def _axis(dim: int) -> Tensor:
    direction = torch.zeros(dim, dtype=torch.float64)
    direction[0] = 1.0
    return direction


BARRIER_DIRECTIONS: dict[str, Callable[[int], Tensor]] = {
    "diagonal": _diagonal,  # u = (1, ..., 1) / sqrt(d): every coordinate shares the barrier
    "axis": _axis,          # u = e_1: the barrier lies along one coordinate, where elementwise optimizers decouple
}


def barrier_direction(name: str, dim: int) -> Tensor:
    if name not in BARRIER_DIRECTIONS:
        raise ValueError(f"Unknown barrier direction {name!r}; valid: {sorted(BARRIER_DIRECTIONS)}")
    if dim < 1:
        raise ValueError(f"dim={dim}: the landscape needs at least one dimension")
    return BARRIER_DIRECTIONS[name](dim)


class DoubleWell:
    """A batch of double wells, one per particle. Shapes: ``curvature`` [N], positions ``x`` [N, d].

    Per-particle constants are computed once here, so a simulation step is a handful of elementwise ops.
    """

    def __init__(self, curvature: Tensor, *, barrier: float, batch_size: float, direction: Tensor,
                 transverse_curvature: float = 0.0):
        self.curvature = curvature                          # h per particle, [N]
        self.barrier = float(barrier)                       # loss height of the saddle above the minima
        self.batch_size = float(batch_size)                 # B in the noise covariance H_min / B
        self.direction = direction.to(curvature.dtype)      # u, [d], unit norm
        self.transverse_curvature = float(transverse_curvature)  # h_perp; 0 when d = 1 (no transverse axis)
        self.half_width = torch.sqrt(8.0 * self.barrier / curvature)   # w: minimum-to-saddle distance, [N]
        self._inv_w2 = 1.0 / self.half_width**2
        self._slope_scale = 4.0 * self.barrier * self._inv_w2          # L1'(s) = scale * s * (s^2 / w^2 - 1)
        self._noise_across = math.sqrt(self.transverse_curvature / self.batch_size)
        self._noise_along = torch.sqrt(curvature / self.batch_size) - self._noise_across

    @classmethod
    def build(cls, curvatures: Sequence[float], *, particles: int, barrier: float, batch_size: float,
              dim: int = 1, direction: str = "diagonal", transverse_curvature: float | None = None,
              dtype: torch.dtype = torch.float32) -> DoubleWell:
        """``particles`` rows per curvature, settings in the order given (rows ``k*particles`` onwards are
        setting ``k``)."""
        if min(curvatures) <= 0 or barrier <= 0 or batch_size <= 0 or particles < 1:
            raise ValueError(f"curvatures {list(curvatures)}, barrier={barrier}, batch_size={batch_size} and "
                             f"particles={particles} must all be positive")
        if dim > 1 and (transverse_curvature is None or transverse_curvature <= 0):
            raise ValueError(f"dim={dim} needs a positive transverse_curvature (the valley across the barrier)")
        h = torch.tensor(curvatures, dtype=dtype).repeat_interleave(particles)
        return cls(h, barrier=barrier, batch_size=batch_size, direction=barrier_direction(direction, dim),
                   transverse_curvature=transverse_curvature if dim > 1 else 0.0)

    @property
    def dim(self) -> int:
        return self.direction.numel()

    def start(self) -> Tensor:
        """Every particle at its left minimum ``-w u``: [N, d]."""
        return -self.half_width[:, None] * self.direction

    def coordinate(self, x: Tensor) -> Tensor:
        """``s = u . x``, the position along the barrier direction: [N]."""
        return x @ self.direction

    def escaped(self, x: Tensor) -> Tensor:
        """Whether each particle has reached the other minimum (``s >= w``): crossed the barrier for good."""
        return self.coordinate(x) >= self.half_width

    def loss(self, x: Tensor) -> Tensor:
        s = self.coordinate(x)
        along = self.barrier * (1 - s * s * self._inv_w2) ** 2
        return along + 0.5 * self.transverse_curvature * (x - s[:, None] * self.direction).pow(2).sum(1)

    def gradient(self, x: Tensor, s: Tensor | None = None) -> Tensor:
        """Full-batch gradient, [N, d]: ``L1'(s) u + h_perp (x - s u)``; pass ``s = coordinate(x)`` if known."""
        s = self.coordinate(x) if s is None else s
        slope = self._slope_scale * s * (s * s * self._inv_w2 - 1.0)
        if self.dim == 1:
            return slope[:, None]
        return (slope - self.transverse_curvature * s)[:, None] * self.direction + self.transverse_curvature * x

    def sample_noise(self, generator: torch.Generator) -> Tensor:
        """One draw of ``H_min^{1/2} z / sqrt(B)`` per particle, [N, d]."""
        z = torch.randn(self.curvature.shape[0], self.dim, generator=generator, dtype=self.curvature.dtype)
        if self.dim == 1:
            return self._noise_along[:, None] * z
        return self._noise_across * z + (self._noise_along * self.coordinate(z))[:, None] * self.direction
