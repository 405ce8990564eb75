"""The score-based side of the math: the SDEs and their score adapters (``sde``: VP, sub-VP, VE,
the discrete diffusion's VP-type SDE, denoising score matching), NCSN's noise ladder, objective and
NCSNv2's rules (``ncsn``), the probability-flow ODE's solver and likelihood (``ode``), and what a
trained model of any family is to the score samplers (``model.ScoreModel``).
"""

from __future__ import annotations

from ddpm._lazy import lazy_exports

_EXPORTS = {
    "SDE": "sde",
    "VPSDE": "sde",
    "SubVPSDE": "sde",
    "VESDE": "sde",
    "DiscreteVPSDE": "sde",
    "DenoisingScoreMatching": "sde",
    "sde_from_diffusion": "sde",
    "score_from_diffusion": "sde",
    "score_from_eps_model": "sde",
    "sigma_ladder": "ncsn",
    "NoiseConditionalScoreMatching": "ncsn",
    "score_from_ncsn": "ncsn",
    "ncsnv2_settings": "ncsn",
    "num_levels_for": "ncsn",
    "langevin_step_size": "ncsn",
    "max_pairwise_distance": "ncsn",
    "log_likelihood": "ode",
    "ode_bpd": "ode",
    "ode_nll": "ode",
    "ScoreModel": "model",
}

__all__ = list(_EXPORTS)

# Imported on first use, so a stage loads, and DVC makes it depend on, only what it runs.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
