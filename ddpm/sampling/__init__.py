"""Samplers, each in its module, and one runner for all of them (``runner``: the samples in
batches, sample i from item i of the run's "sample" stream). The discrete diffusion's ancestral
loop is ``ddpm.diffusion.GaussianDiffusion.p_sample_loop``; here: DDIM (``ddim``), timestep
respacing (``respacing``), predictor-corrector (``pc``), the probability-flow ODE (``ode``) and
annealed Langevin dynamics (``ald``); all of them under one contract (``contract``: the samples
returned, states reported to a callback, NFE counted by a wrapper).
"""

from __future__ import annotations

from ddpm._lazy import lazy_exports

_EXPORTS = {
    "CountingScore": "contract",
    "StateRecorder": "contract",
    "checked_states": "contract",
    "ddim_step": "ddim",
    "ddim_sample_loop": "ddim",
    "space_timesteps": "respacing",
    "respace": "respacing",
    "pc_sample": "pc",
    "pc_timesteps": "pc",
    "ode_sample": "ode",
    "denoise_step": "ode",
    "ald_sample": "ald",
    "draw_samples": "runner",
    "ancestral_sample": "runner",
    "draw_score_samples": "score_samplers",
    "even_picks": "runner",
}

__all__ = list(_EXPORTS)

# Imported on first use, so a stage loads, and DVC makes it depend on, only what it runs.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
