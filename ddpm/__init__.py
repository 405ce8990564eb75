"""Denoising Diffusion Probabilistic Models: the math, the networks and the samplers.

The public names are imported lazily, so that ``import ddpm.data`` (the prepare stage)
does not load, and so does not depend on, the diffusion code.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["GaussianDiffusion", "get_beta_schedule", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "GaussianDiffusion":
        from ddpm.diffusion import GaussianDiffusion

        return GaussianDiffusion
    if name == "get_beta_schedule":
        from ddpm.schedules import get_beta_schedule

        return get_beta_schedule
    raise AttributeError(f"module 'ddpm' has no attribute {name!r}")
