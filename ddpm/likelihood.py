"""Timestep-free distribution functions: Gaussian KL, the exact discretized Gaussian
decoder likelihood for K grey levels, and the continuous Gaussian log-density.

All functions return per-element values in nats (no reduction); callers average
over dimensions and convert with ``nats_to_bits``.
"""

from __future__ import annotations

import math

import torch


def nats_to_bits(x: torch.Tensor) -> torch.Tensor:
    return x / math.log(2.0)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch dimension."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) per element, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log N(x; mean, exp(log_scale)^2) per element, in nats (continuous data)."""
    z = (x - mean) * torch.exp(-log_scale)
    return -0.5 * z**2 - log_scale - 0.5 * math.log(2.0 * math.pi)


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a <= 0, accurate over the whole range (Maechler 2012)."""
    return torch.where(
        a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a))
    )


def log_normal_mass(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for standard-normal bounds lower < upper (inf allowed).

    Uses the exact log-CDF and the symmetry Phi(b) - Phi(a) = Phi(-a) - Phi(-b) to keep
    both bounds in the lower tail, where ``log_ndtr`` has full relative precision; so the
    result is finite and accurate for means far outside the bucket and for tiny scales.
    """
    flip = lower > 0
    lo = torch.where(flip, -upper, lower)
    hi = torch.where(flip, -lower, upper)
    log_hi = torch.special.log_ndtr(hi)
    log_lo = torch.special.log_ndtr(lo)
    return log_hi + _log1mexp(log_lo - log_hi)


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, num_levels: int
) -> torch.Tensor:
    """log p(x) per element, in nats, for data on a K-level grid in [-1, 1].

    p(x) is the mass of N(mean, exp(log_scale)^2) on the bucket
    [x - 1/(K-1), x + 1/(K-1)], with the lowest bucket extended to -inf and the highest
    to +inf (Ho et al. 2020, eq. 13, for any K instead of 256). ``x`` must already lie
    on the grid {2v/(K-1) - 1 : v = 0..K-1}. Computed in float64.
    """
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"num_levels={num_levels!r} must be an integer >= 2")
    x, mean, log_scale = (v.to(torch.float64) for v in torch.broadcast_tensors(x, mean, log_scale))
    half_width = 1.0 / (num_levels - 1)
    inv_scale = torch.exp(-log_scale)
    lower = (x - half_width - mean) * inv_scale
    upper = (x + half_width - mean) * inv_scale
    # Edge buckets take the tails; compare with half a bucket of slack against rounding.
    lower = torch.where(x < -1.0 + half_width, torch.full_like(lower, -math.inf), lower)
    upper = torch.where(x > 1.0 - half_width, torch.full_like(upper, math.inf), upper)
    return log_normal_mass(lower, upper)
