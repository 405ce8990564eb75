"""A quality report's vocabulary, without the metrics themselves: floor names, sampler-setting
names and NFE, the MLflow metrics of a report and its terminal table. The plot stage reads
reports with it, so it imports no metric code."""

from __future__ import annotations

from typing import Any

Scores = dict[str, float]


def floor_key(key: str) -> str:
    """``fd_classifier`` -> ``fd_classifier_floor``; ``fd_classifier_std`` ->
    ``fd_classifier_floor_std``."""
    if key.endswith("_std"):
        return key[: -len("_std")] + "_floor_std"
    return key + "_floor"


def with_floors(scores: Scores, floors: Scores) -> Scores:
    """Each metric (and its standard error, where it has one) followed by its floor and the
    floor's spread over the real draws (``floor_scores``)."""
    out: Scores = {}
    for key, value in scores.items():
        out[key] = value
        if key.endswith("_stderr"):
            continue
        if f"{key}_stderr" in scores:
            out[f"{key}_stderr"] = scores[f"{key}_stderr"]
        out[floor_key(key)] = floors[key]
        if f"{key}_std" in floors:
            out[floor_key(f"{key}_std")] = floors[f"{key}_std"]
    return out


def setting_name(sampler: str, nfe: int) -> str:
    """A sampler setting's name in keys and tables: ``ddim_50``, ``ancestral_1000``."""
    return f"{sampler}_{nfe}"


def sampler_nfe(sampler: str, steps: int, timesteps: int) -> int:
    """Network evaluations per sample: the number of reverse steps (all T when steps is 0)."""
    return steps if 0 < steps < timesteps else timesteps


def tracking_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics of a quality report: the samples' metrics and floors under their own
    names, the number of network evaluations per sample, and the classifier's test accuracy."""
    samples = report["samples"]
    out = {k: float(v) for k, v in samples.items() if k not in ("sampler", "nfe")}
    out["sample_nfe"] = float(samples["nfe"])
    if "classifier_test_accuracy" in report:
        out["classifier_test_accuracy"] = float(report["classifier_test_accuracy"])
    return out


def format_table(scores: Scores) -> str:
    """``metric  value +- stderr  floor +- spread`` lines for the terminal."""
    lines = [f"{'metric':<22} {'value':>22} {'floor (real vs real)':>24}"]
    for key, value in scores.items():
        if key.endswith(("_stderr", "_floor", "_std")) or not isinstance(value, float):
            continue
        lines.append(f"{key:<22} {_with_error(value, scores.get(key + '_stderr')):>22} "
                     f"{_with_error(scores.get(floor_key(key)), scores.get(floor_key(key + '_std'))):>24}")
    return "\n".join(lines)


def _with_error(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g} +- {stderr:.2g}" if stderr is not None else f"{value:.4g}"
