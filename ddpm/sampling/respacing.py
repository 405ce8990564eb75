"""Timestep respacing (Nichol & Dhariwal 2021, Sec. 4): a discrete diffusion over a subset of
its timesteps, whose betas keep q(x_t | x0) at every kept step, and the network wrapped to see
the original timesteps."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddpm.diffusion import GaussianDiffusion, Model


def space_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """``num_steps`` code timesteps spread evenly over 0..T-1, always keeping 0 and T-1."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps={num_steps} must lie in 1..{num_timesteps} (the timesteps)")
    if num_steps == 1:
        return [num_timesteps - 1]
    idx = torch.linspace(0, num_timesteps - 1, num_steps, dtype=torch.float64).round().long()
    return sorted(set(idx.tolist()))


class _RespacedModel:
    """Maps the respaced diffusion's timesteps 0..K-1 back to the original ones."""

    def __init__(self, model: Model, timestep_map: torch.Tensor) -> None:
        self.model = model
        self.timestep_map = timestep_map

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x_t, self.timestep_map.to(t.device)[t])


def respace(diffusion: GaussianDiffusion, use_timesteps: Sequence[int], model: Model
            ) -> tuple[GaussianDiffusion, Model]:
    """A diffusion over a subset of code timesteps and the model wrapped to match.

    New betas come from the retained alphas_cumprod: beta_i = 1 - abar_{t_i} / abar_{t_{i-1}}
    (improved-diffusion's respacing), so q(x_t | x0) is unchanged at every kept step.
    """
    keep = sorted({int(t) for t in use_timesteps})
    if not keep or keep[0] < 0 or keep[-1] >= diffusion.num_timesteps:
        raise ValueError(f"use_timesteps must lie in 0..{diffusion.num_timesteps - 1}")
    abar = diffusion.alphas_cumprod[keep]
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    betas = 1.0 - abar / prev
    spaced = GaussianDiffusion(betas, mean_type=diffusion.mean_type, var_type=diffusion.var_type,
                               loss_type=diffusion.loss_type, loss_norm=diffusion.loss_norm,
                               hybrid_lambda=diffusion.hybrid_lambda)
    return spaced, _RespacedModel(model, torch.tensor(keep, dtype=torch.long))
