"""What the DVC stages share and the math does not need: building models from the config, family
by family (``build``), checkpoints (``checkpoint``), devices, threads and torchrun (``runtime``),
the stage entry point and its error handling (``stage``), MLflow tracking (``tracking``) and
the MLflow view of the experiment (``view``).
"""

from __future__ import annotations

from ddpm._lazy import lazy_exports

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

# Imported on first use, so a stage loads, and DVC makes it depend on, only what it runs.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
