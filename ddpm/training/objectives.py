"""The one protocol every family's training objective follows: draw the timesteps of a batch
(from the step's generator) and return per-example losses, so the training loop treats DDPM,
continuous denoising score matching and NCSN alike.

``ddpm.score.sde.DenoisingScoreMatching`` and ``ddpm.score.ncsn.NoiseConditionalScoreMatching``
follow it as they are; the discrete diffusion's losses need the data's grey levels for the
t = 0 decoder term, which ``DiffusionObjective`` binds once, so that no objective is handed an
argument it has no use for.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ddpm.diffusion import GaussianDiffusion, Model


class Objective(Protocol):
    def draw_timesteps(self, batch: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
        """The batch's timesteps: integer steps or levels, or continuous times."""

    def training_losses(self, model: Model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        """Per-example losses: ``loss`` [B] (what is minimised) and its parts."""


class DiffusionObjective:
    """The discrete diffusion's training losses (``GaussianDiffusion.training_losses``) with t
    uniform on 0..T-1 and the data's grey levels ``num_levels`` for the discrete decoder (None:
    continuous data, the Gaussian decoder)."""

    def __init__(self, diffusion: GaussianDiffusion, num_levels: int | None) -> None:
        self.diffusion, self.num_levels = diffusion, num_levels

    def draw_timesteps(self, batch: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
        return torch.randint(0, self.diffusion.num_timesteps, (batch,), device=device, generator=generator)

    def training_losses(self, model: Model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        return self.diffusion.training_losses(model, x0, t=t, noise=noise, num_levels=self.num_levels)
