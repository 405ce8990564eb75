"""Training: the loop (``loop``: one seeded, resumable, torchrun-ready loop for every family's
objective) and the resumable training state with the identity that decides whether a saved
state may be continued (``state``).
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    # Imported on first use, so a stage loads, and DVC makes it depend on, only what it runs.
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
