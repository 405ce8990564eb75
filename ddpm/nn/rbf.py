"""An MLP with one radial-basis-function hidden layer, for low-dimensional data (the Swiss roll).

The reverse-process network of Sohl-Dickstein et al. 2015 (App. D.1.1) for the Swiss roll: a
single normalised RBF hidden layer shared by all timesteps, read out by linear layers whose
weights are specific to each timestep, with one read-out for the mean and one for the
variance. Here the mean head predicts what ``mean_type`` asks for (eps, x0 or v) and the
variance head gives the ``learned_range`` interpolation of Nichol & Dhariwal, so the second
head exists only when the variance is learned.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ddpm.nn.embeddings import interpolate_rows


class TimestepLinear(nn.Module):
    """``y = W[t] h``: a linear map with its own weight matrix for every timestep.

    No bias: the normalised RBF features sum to one, so adding ``b[t]`` is the same as adding
    ``b[t]`` to every column of ``W[t]``.
    """

    def __init__(self, in_features: int, out_features: int, timesteps: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(timesteps, out_features, in_features))
        # nn.Linear's default range, so each timestep's head starts like a fresh linear layer.
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # A float t (fractional timestep) interpolates the neighbouring matrices.
        return torch.einsum("boi,bi->bo", interpolate_rows(self.weight, t).to(h.dtype), h)


class RBFMLP(nn.Module):
    """Normalised Gaussian RBF hidden layer of ``hidden`` units, then per-timestep linear heads.

    Unit ``k`` has a centre ``c_k`` and per-dimension widths ``s_k``; its activation is
    ``softmax_k(-||(x - c_k) / s_k||^2 / 2)``, a Gaussian bump divided by the sum of all bumps.
    The normalisation keeps the features non-vanishing far from every centre (noisy ``x_t``),
    where plain Gaussian bumps would all be zero. Call as ``model(x_t, t)`` with ``x_t``
    [B, dim] and ``t`` a LongTensor [B] in ``0 .. timesteps - 1`` (or a float tensor of
    fractional timesteps: the heads interpolate linearly); returns [B, dim], or
    [B, 2 * dim] (mean head, then variance head) with ``learn_sigma``.
    """

    def __init__(self, dim: int = 2, hidden: int = 16, timesteps: int = 40, learn_sigma: bool = False) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("timesteps", timesteps)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RBFMLP: {name}={value!r} must be a positive integer")
        self.dim, self.hidden, self.timesteps = dim, hidden, timesteps
        # Centres drawn from N(0, I), the distribution x_t ends in. Near the origin, `hidden`
        # such points have density hidden * (2 pi)^(-dim / 2), so neighbours sit about
        # sqrt(2 pi) * hidden^(-1 / dim) apart; that width makes neighbouring bumps overlap.
        self.centers = nn.Parameter(torch.randn(hidden, dim))
        spacing = math.sqrt(2 * math.pi) * hidden ** (-1.0 / dim)
        self.log_widths = nn.Parameter(torch.full((hidden, dim), math.log(spacing)))
        self.mean_head = TimestepLinear(hidden, dim, timesteps)
        self.var_head = TimestepLinear(hidden, dim, timesteps) if learn_sigma else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised RBF activations [B, hidden] of ``x`` [B, dim]."""
        z = (x[:, None, :] - self.centers) * torch.exp(-self.log_widths)
        return torch.softmax(-0.5 * z.square().sum(dim=-1), dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        out = self.mean_head(h, t)
        if self.var_head is not None:
            out = torch.cat([out, self.var_head(h, t)], dim=1)
        return out
