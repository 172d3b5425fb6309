"""Filter-normalized random directions (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets").

A Gaussian direction ``d`` is rescaled filter by filter so that each filter of ``d`` has the norm of the
matching filter of the weights: ``d_ij <- d_ij / ||d_ij|| * ||theta_ij||``. A filter is one slice along the
first dimension of a weight with two or more dimensions: one output channel of a conv kernel, one output unit
(row) of a linear layer. This removes the scale invariance that batch norm gives the weights, so slices of
different networks are comparable. Parameters with at most one dimension (biases, norm-layer scales and
shifts) get a zero direction by default, as in Li et al.; with ``ignore_bias_and_bn=False`` they get a copy of
the parameter itself. Buffers (batch-norm running statistics) are never perturbed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dualadam.analysis.evaluation import trainable_parameters


def filter_normalized_direction(model: nn.Module, *, seed: int, ignore_bias_and_bn: bool = True) -> list[Tensor]:
    """One direction, a tensor per trainable parameter (same shape, device, dtype), drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    direction = []
    for param in trainable_parameters(model):
        weights = param.detach()
        noise = torch.randn(weights.shape, generator=generator, dtype=torch.float32).to(weights)
        if weights.dim() <= 1:
            direction.append(torch.zeros_like(weights) if ignore_bias_and_bn else weights.clone())
            continue
        direction.append(noise * _filter_scale(noise, weights))
    return direction


def filter_norms(tensor: Tensor) -> Tensor:
    """Euclidean norm of each filter (slice along dim 0) of a tensor with at least two dimensions: shape [out]."""
    return tensor.flatten(1).norm(dim=1)


def _filter_scale(noise: Tensor, weights: Tensor) -> Tensor:
    scale = filter_norms(weights) / filter_norms(noise).clamp_min(torch.finfo(noise.dtype).tiny)
    return scale.view(-1, *([1] * (weights.dim() - 1)))
