"""The package's layers, pinned: the math never imports the pipeline, only the tracking module
imports MLflow, and no library module imports a stage. Read from the source (every import
statement, also those inside functions), so a lazy import cannot hide a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ddpm"
# The math: formulas, samplers, likelihoods, networks, metrics and data; usable from a notebook
# without the config, the pipeline or the tracking server.
MATH = ("diffusion.py", "schedules.py", "likelihood.py", "seeding.py", "streams.py", "errors.py", "io.py",
        "batches.py", "progress.py", "score", "sampling", "evaluation", "nn", "metrics")
ABOVE_THE_MATH = ("ddpm.config", "ddpm.pipeline", "ddpm.training", "ddpm.quality", "ddpm.plotting", "stages")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _modules(*entries: str) -> list[Path]:
    found = []
    for entry in entries:
        path = PACKAGE / entry
        found += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return found


@pytest.mark.parametrize("path", _modules(*MATH), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_math_imports_nothing_above_it(path):
    above = sorted(n for n in _imports(path) if n.startswith(ABOVE_THE_MATH))
    assert not above, f"{path.relative_to(PACKAGE)} imports {above}"


def test_only_the_tracking_module_imports_mlflow_and_no_module_imports_a_stage():
    users = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if any(n == "mlflow" or n.startswith("mlflow.") for n in _imports(p))}
    assert users == {"pipeline/tracking.py"}
    assert not [p for p in PACKAGE.rglob("*.py") if any(n.startswith("stages") for n in _imports(p))]
