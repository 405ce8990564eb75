"""The sample-quality vocabulary: the metric families, the samplers of the sweep, and their rules.

Kept apart from ``ddpm.quality.suites`` (which computes the metrics and needs torch) so that params
can be checked against it when they load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ddpm.config.checks import AUTO, check
from ddpm.data.registry import DATASET_INFO
from ddpm.errors import ConfigError

if TYPE_CHECKING:
    from ddpm.config.schema import Params

# Metric families of the quality stage, each with the datasets it can serve: features of the
# classifier the pipeline trains (labelled images), of the Inception network whose weights
# the user supplies (3-channel images), or distances between the raw points (vectors).
# fmt: off
QUALITY_FAMILIES: dict[str, str] = {
    "classifier": "labelled image datasets (a Frechet distance, KID, precision/recall, density/coverage "
                  "and the label distribution in the features of the classifier stage's network)",
    "inception": "3-channel image datasets (FID, KID and IS with quality.inception_weights)",
    "raw": "vector datasets (energy distance and sliced Wasserstein distance of the points)",
}
SAMPLERS = ("ancestral", "ddim")
# fmt: on


def quality_families_for(dataset: str) -> tuple[str, ...]:
    """The metric families ``dataset`` can serve."""
    info = DATASET_INFO[dataset]
    if info.kind == "vector":
        return ("raw",)
    return ("classifier", "inception") if info.shape[0] == 3 else ("classifier",)


def default_quality_metrics(dataset: str) -> tuple[str, ...]:
    """``quality.metrics: auto``: every family the dataset serves (Inception is then skipped,
    with a line saying how to enable it, unless its weights are given)."""
    return quality_families_for(dataset)


def parse_sampler_setting(text: str, timesteps: int) -> tuple[str, int]:
    """``"ddim:50"`` -> ("ddim", 50); ``"ancestral"`` -> ("ancestral", 0), 0 meaning all T steps.

    Steps of T or more also mean all T steps, so the default sweep stays valid for a run with
    fewer timesteps (``-S timesteps=50``); settings that coincide are scored once. ConfigError
    for anything else, naming the accepted forms."""
    name, _, steps = str(text).partition(":")
    accepted = (
        f"'sampler' or 'sampler:steps' with sampler one of {', '.join(SAMPLERS)} "
        "and steps an integer >= 1 (steps >= timesteps: all of them), e.g. ddim:50"
    )
    if name not in SAMPLERS or (steps and not (steps.isdigit() and int(steps) >= 1)):
        raise ConfigError(f"quality.sweep entry {text!r} is not accepted; expected {accepted}")
    return name, (int(steps) if steps and int(steps) < timesteps else 0)


def validate_quality(params: Params) -> None:
    """The quality keys against the dataset, the timesteps and the number of samples."""
    q, n = params.quality, params.sample.num_samples
    servable = quality_families_for(params.dataset)
    if q.metrics != AUTO:
        for family in q.metrics:
            check(
                family in QUALITY_FAMILIES,
                "quality.metrics",
                list(q.metrics),
                f"a list of families from {', '.join(QUALITY_FAMILIES)}, or auto",
            )
            check(
                family in servable,
                "quality.metrics",
                list(q.metrics),
                f"families that dataset={params.dataset} can serve: {', '.join(servable)} "
                f"('{family}' serves {QUALITY_FAMILIES[family]})",
            )
    for entry in q.sweep:
        parse_sampler_setting(entry, params.diffusion.timesteps)
    check(n >= 2, "sample.num_samples", n, "an integer >= 2 (KID compares pairs of samples)")
    if q.kid_subset_size != AUTO:
        check(
            2 <= q.kid_subset_size <= n,
            "quality.kid_subset_size",
            q.kid_subset_size,
            f"an integer in 2..sample.num_samples={n} (KID's subsets are drawn from the samples; "
            "draw more samples or use smaller subsets), or auto",
        )
    # Not a field bound: its auto is derived from sample.num_samples, checked just above.
    if q.kid_subsets != AUTO:
        check(q.kid_subsets >= 1, "quality.kid_subsets", q.kid_subsets, "an integer >= 1 or auto")
