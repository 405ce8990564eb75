"""What the DVC stages share and the math does not need: building models from the config, family
by family (``build``), checkpoints (``checkpoint``), devices, threads and torchrun (``runtime``),
the stage entry point and its error handling (``stage``), MLflow tracking (``tracking``) and
the MLflow view of the experiment (``view``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainedModel": "build",
    "build_diffusion": "build",
    "build_network": "build",
    "build_objective": "build",
    "data_resolved_params": "build",
    "load_trained": "build",
    "load_for_inference": "build",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
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
