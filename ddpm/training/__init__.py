"""Training: the loop (``loop``: one seeded, resumable, torchrun-ready loop for every family's
objective) and the resumable training state with the identity that decides whether a saved
state may be continued (``state``).
"""

from __future__ import annotations

from ddpm._lazy import lazy_exports

_EXPORTS = {
    "train": "loop",
    "TrainResult": "loop",
    "resolved_params": "loop",
    "check_batch_size": "loop",
    "TrainingState": "state",
    "RunIdentity": "state",
    "training_fingerprint": "state",
}

__all__ = list(_EXPORTS)

# Imported on first use, so a stage loads, and DVC makes it depend on, only what it runs.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
