"""The likelihoods as reported numbers: the discrete diffusion's variational bound in bits/dim
(``bound``) and the probability-flow ODE likelihood (``ode_likelihood``), each per example,
merged over torchrun ranks and summarised with its standard error.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    # Imported on first use, so a stage loads, and DVC makes it depend on, only what it runs.
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
