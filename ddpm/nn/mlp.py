"""Timestep-conditioned MLP for low-dimensional data such as the 2-D Swiss roll.

The shape follows the classic Swiss-roll diffusion tutorial: every hidden layer is a
"conditional linear" layer whose output is scaled elementwise by a per-timestep vector.

Timesteps are code indices: a LongTensor, or a float tensor of fractional indices (a
continuous-time sampler driving a discrete network, ``ddpm.score.sde.score_from_diffusion``), for
which per-timestep tables are interpolated linearly (``ddpm.nn.embeddings.interpolate_rows``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ddpm.nn.embeddings import interpolate_rows, timestep_embedding

TIME_EMBEDDINGS = ("learned", "sinusoidal")


class ConditionalLinear(nn.Module):
    """``Linear(x) * gamma(t)``, where ``gamma(t)`` is a learned per-timestep scale vector."""

    def __init__(
        self, in_features: int, out_features: int, timesteps: int, time_embedding: str
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.time_embedding = time_embedding
        if time_embedding == "learned":
            # One free vector per timestep; uniform [0, 1) init as in the tutorial, so every
            # unit starts switched on with a random gain.
            self.embed = nn.Embedding(timesteps, out_features)
            nn.init.uniform_(self.embed.weight)
        else:
            # A smooth function of t: shares strength across neighbouring timesteps and keeps
            # working if the number of timesteps changes (e.g. respaced sampling).
            self.embed = nn.Linear(out_features, out_features)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.time_embedding == "learned":
            gamma = interpolate_rows(self.embed.weight, t) if t.is_floating_point() else self.embed(t)
        else:
            gamma = self.embed(timestep_embedding(t, self.embed.in_features).to(x.dtype))
        return self.linear(x) * gamma


class MLP(nn.Module):
    """``num_layers`` conditional linear layers with softplus, then a plain linear read-out.

    Call as ``model(x_t, t)`` with ``x_t`` [B, dim] and ``t`` a LongTensor [B] in
    ``0 .. timesteps - 1`` (or a float tensor of fractional timesteps); returns [B, out_dim]
    (``out_dim`` defaults to ``dim``; pass ``2 * dim`` for learned variances).
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        num_layers: int = 3,
        timesteps: int = 1000,
        time_embedding: str = "learned",
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("dim", dim),
            ("hidden", hidden),
            ("num_layers", num_layers),
            ("timesteps", timesteps),
        ):
            _check_positive_int(name, value)
        if out_dim is not None:
            _check_positive_int("out_dim", out_dim)
        if time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(
                f"MLP: time_embedding={time_embedding!r} is not one of "
                f"{', '.join(map(repr, TIME_EMBEDDINGS))}"
            )
        self.dim = dim
        self.out_dim = dim if out_dim is None else out_dim
        self.timesteps = timesteps
        widths = [dim] + [hidden] * num_layers
        self.layers = nn.ModuleList(
            ConditionalLinear(w_in, w_out, timesteps, time_embedding)
            for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.out = nn.Linear(hidden, self.out_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.softplus(layer(x, t))
        return self.out(x)


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"MLP: {name}={value!r} must be a positive integer")
