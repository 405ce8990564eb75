"""The likelihoods as reported numbers: the discrete diffusion's variational bound in bits/dim
(``bound``) and the probability-flow ODE likelihood (``ode_likelihood``), each per example,
merged over torchrun ranks and summarised with its standard error.
"""

from __future__ import annotations

from ddpm._lazy import lazy_exports

_EXPORTS = {
    "evaluation_inputs": "bound",
    "bound_per_example": "bound",
    "bound_curve_point": "bound",
    "merge_parts": "bound",
    "summarize_bound": "bound",
    "OdeSettings": "ode_likelihood",
    "ode_likelihood_per_example": "ode_likelihood",
    "merge_ode_parts": "ode_likelihood",
    "summarize_ode": "ode_likelihood",
}

__all__ = list(_EXPORTS)

# Imported on first use, so a stage loads, and DVC makes it depend on, only what it runs.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
