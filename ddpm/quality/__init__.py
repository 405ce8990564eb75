"""Sample quality: the metric suites and their floors (``suites``), a report's vocabulary
(``report``), the small classifier whose features score digits and MNIST (``classifier``), and
the quality stage's run (``run``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MetricSuite": "suites",
    "real_reference": "suites",
    "floor_scores": "suites",
    "score_samples": "suites",
    "tracking_metrics": "report",
    "format_table": "report",
    "Classifier": "classifier",
    "train_classifier": "classifier",
    "load_classifier": "classifier",
    "save_classifier": "classifier",
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
