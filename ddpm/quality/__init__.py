"""Sample quality: the metric suites and their floors (``suites``), a report's vocabulary
(``report``), the small classifier whose features score digits and MNIST (``classifier``), and
the quality stage's run (``run``).
"""

from __future__ import annotations

from ddpm._lazy import lazy_exports

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

# Imported on first use, so a stage loads, and DVC makes it depend on, only what it runs.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
