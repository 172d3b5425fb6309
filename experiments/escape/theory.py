"""Diffusion theory of escape: effective temperatures, Kramers' rate, and the exact 1-D mean first-passage time.

An optimizer whose stationary update is ``x <- x - M (L'(x) + xi)``, with mobility ``M`` per step and noise
variance ``sigma^2 = h / B`` (see :mod:`landscape`), is, for small steps, the overdamped Langevin dynamics

    dx = -M L'(x) dk + sqrt(2 M T) dW_k,     T = M sigma^2 / 2,     k = steps

(matching the per-step noise variance ``M^2 sigma^2 = 2 M T``). With Adam's second moment settled at
``v = sigma^2`` the mobility is ``M = lr * sigma^k`` (``preconditioner_power`` k: SGD 0, Adam -1, InvAdam 1):

    SGD      T = lr h / (2B)                  ln(tau) ~ (2B barrier / lr) / h
    Adam     T = lr sqrt(h/B) / 2             ln(tau) ~ 1 / sqrt(h)   (less sensitive to sharpness)
    InvAdam  T = lr (h/B)^(3/2) / 2           ln(tau) ~ 1 / h^(3/2)   (leaves sharp basins fastest)

Kramers' formula (overdamped, high barrier) for the mean escape time over a barrier ``barrier`` from a
minimum of curvature ``h_min`` across a saddle of curvature ``-h_saddle``, in steps:

    tau_K = 2 pi / (M sqrt(h_min h_saddle)) * exp(barrier / T).

Its assumptions: ``barrier / T >> 1`` (its relative error is O(T / barrier)), ``M h << 1`` (the step is a
fine discretization of the diffusion), overdamped motion (no momentum; true for SGD, approximate for Adam's
momentum), noise of constant covariance in the basin. For the 1-D diffusion the mean first-passage time is
also known exactly, ``tau = (1 / (M T)) int_a^c dy exp(L(y)/T) int_-inf^y dz exp(-L(z)/T)``; the gap between
the two is Kramers' own asymptotic error, the gap between either and a simulation is the simulator's.
"""

from __future__ import annotations

import math

import numpy as np


def noise_std(curvature: float, batch_size: float) -> float:
    """sigma = sqrt(h / B): the gradient-noise standard deviation along the barrier direction."""
    return math.sqrt(curvature / batch_size)


def mobility(lr: float, curvature: float, batch_size: float, preconditioner_power: int = 0) -> float:
    """M = lr * sigma^k: how far one step moves per unit of gradient, once the second moment has settled."""
    return lr * noise_std(curvature, batch_size) ** preconditioner_power


def effective_temperature(lr: float, curvature: float, batch_size: float, preconditioner_power: int = 0) -> float:
    """T = M sigma^2 / 2, in loss units: the Langevin temperature whose stationary law is exp(-L / T)."""
    return mobility(lr, curvature, batch_size, preconditioner_power) * curvature / batch_size / 2.0


def matched_learning_rate(sgd_lr: float, curvature: float, batch_size: float, preconditioner_power: int) -> float:
    """The learning rate that gives an optimizer SGD's temperature (and mobility) at curvature ``curvature``."""
    return sgd_lr / noise_std(curvature, batch_size) ** preconditioner_power


def kramers_escape_steps(barrier: float, curvature_min: float, curvature_saddle: float, temperature: float,
                         step_mobility: float) -> float:
    """Kramers' mean escape time, in optimizer steps (``curvature_saddle`` is the magnitude |L''(saddle)|)."""
    prefactor = 2.0 * math.pi / (step_mobility * math.sqrt(curvature_min * curvature_saddle))
    return prefactor * math.exp(barrier / temperature)


def double_well_kramers_steps(barrier: float, curvature: float, temperature: float, step_mobility: float) -> float:
    """Kramers for :class:`DoubleWell` along its barrier: minimum curvature h, saddle curvature h / 2."""
    return kramers_escape_steps(barrier, curvature, curvature / 2.0, temperature, step_mobility)


def double_well_mfpt_steps(barrier: float, curvature: float, temperature: float, step_mobility: float, *,
                           points: int = 200_001) -> float:
    """Exact mean first-passage time (steps) of the 1-D Langevin dynamics from ``s = -w`` to ``s = +w``.

    Trapezoid quadrature of the double integral on ``points`` nodes; the lower limit is 12 thermal lengths
    below the start, where the integrand is below ``exp(-70)``. Computed in log space so a high barrier
    cannot overflow.
    """
    w = math.sqrt(8.0 * barrier / curvature)
    s = np.linspace(-w - 12.0 * math.sqrt(temperature / curvature), w, points)
    loss_over_t = barrier * (1.0 - (s / w) ** 2) ** 2 / temperature
    boltzmann = np.exp(-loss_over_t)                      # <= 1: the minimum has loss 0
    inner = np.concatenate([[0.0], np.cumsum(0.5 * (boltzmann[1:] + boltzmann[:-1]) * np.diff(s))])
    peak = barrier / temperature                          # exp(L/T) <= exp(peak) on the path
    outer = np.exp(loss_over_t - peak) * inner
    path = s >= -w
    integral = np.trapezoid(outer[path], s[path])
    return float(integral * math.exp(peak) / (step_mobility * temperature))
