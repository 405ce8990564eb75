"""Timestep embeddings: sinusoidal (Vaswani et al. 2017, sec. 3.5; Ho et al. 2020, appendix B), and
the row lookup of per-timestep tables that also takes fractional timesteps."""

from __future__ import annotations

import math

import torch


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Embed integer timesteps ``t`` [B] as float32 [B, dim]: ``dim // 2`` sines, then cosines.

    Frequencies are ``max_period ** (-i / (dim // 2))`` for ``i = 0 .. dim // 2 - 1`` (the
    improved-diffusion form; Ho's TF code divides by ``dim // 2 - 1``, which fails for
    ``dim = 2``). An odd ``dim`` gets one trailing zero column.
    """
    if dim < 1:
        raise ValueError(f"timestep_embedding: dim={dim} must be a positive integer")
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding: t must have shape [B], got {tuple(t.shape)}")
    half = dim // 2
    # Float32 even under autocast: bf16 cannot resolve t * freq for t in the hundreds, so
    # neighbouring timesteps would get the same embedding.
    with torch.autocast(device_type=t.device.type, enabled=False):
        exponents = torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1)
        freqs = torch.exp(-math.log(max_period) * exponents)
        args = t.to(torch.float32)[:, None] * freqs[None, :]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
        if dim % 2:
            emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def interpolate_rows(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``table[t]`` for a LongTensor ``t`` [B]; for a float ``t`` the linear interpolation
    between rows ``floor(t)`` and ``floor(t) + 1``, with ``t`` clamped to ``0 .. len(table) - 1``.

    An integer-valued float ``t`` gives exactly ``table[t]`` (``lerp`` with weight 0 returns its
    start), so a network answers a float timestep at a table row as it answers the integer.
    """
    if not t.is_floating_point():
        return table[t]
    last = table.shape[0] - 1
    t = t.clamp(0, last)
    low = t.floor()
    weight = (t - low).to(table.dtype).reshape(-1, *([1] * (table.ndim - 1)))
    low = low.long()
    return torch.lerp(table[low], table[(low + 1).clamp(max=last)], weight)
