"""Sample quality of a model's samples, each metric next to its floor.

A set of samples is compared with a *reference*: ``n`` real training examples drawn at
random. The floor of every metric is the same metric for a second, disjoint draw of ``n``
real examples against that reference: what a perfect model (whose samples are independent
real data) scores at this sample size. Finite-sample metrics are biased (a Frechet distance
is > 0 and precision < 1 for real against real), so a number means little without it.

Metric families (``ddpm.config.QUALITY_FAMILIES``) name their features in their keys:

- ``classifier``: the penultimate features of the classifier the pipeline trains
  (``ddpm.quality.classifier``): ``fd_classifier`` (a Frechet distance in those features, not FID),
  ``kid_classifier``, precision/recall (Kynkaanniemi et al. 2019), density/coverage (Naeem et
  al. 2020), and the predicted labels' spread over the classes (mode coverage).
- ``inception``: FID, KID and IS in the features of the Inception weights the user supplies
  (``ddpm.metrics.inception``).
- ``raw``: the energy distance and the sliced Wasserstein distance of the points themselves.

Samples of images are first rounded to the data's grey levels, as real images are stored,
so that the metrics compare like with like.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ddpm import metrics, seeding
from ddpm.data.scaling import from_model_space, to_model_space
from ddpm.errors import EvaluationError
from ddpm.metrics.inception import InceptionFeatures, inception_features, inception_metrics
from ddpm.quality.classifier import classifier_features, predict_labels

Scores = dict[str, float]


@dataclass(frozen=True)
class MetricSuite:
    """One metric family: its name and ``score(samples, reference) -> {key: value}``, both in
    model space ([-1, 1] images or raw vectors)."""

    name: str
    score: Callable[[torch.Tensor, torch.Tensor], Scores]


def real_reference(train: np.ndarray, n: int, seed: int, max_floor_draws: int = 4
                   ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Disjoint random subsets of ``n`` training examples each: the reference that every set
    of samples is compared with, and up to ``max_floor_draws`` real draws (as many as the
    split holds) whose scores against it give the floors and their spread.

    EvaluationError when the training split holds fewer than 2 n examples: overlapping draws
    would share examples and flatter the floor.
    """
    if len(train) < 2 * n:
        raise EvaluationError(
            f"the quality metrics of {n} samples need 2 x {n} = {2 * n} real training examples (a reference "
            f"set and a disjoint draw for the floors), but the training split holds {len(train)}; "
            "lower sample.num_samples"
        )
    perm = torch.randperm(len(train), generator=seeding.generator(seed, "metrics", key=(1,))).numpy()
    draws = min(max_floor_draws, len(train) // n - 1)
    return train[perm[:n]], [train[perm[(k + 1) * n:(k + 2) * n]] for k in range(draws)]


def floor_scores(families: list[MetricSuite], real_draws: list[torch.Tensor], reference: torch.Tensor) -> Scores:
    """The floors: each metric's mean over the real draws scored against the reference
    (``<metric>``), and, with two or more draws, its standard deviation over them
    (``<metric>_std``): how much one measurement at this sample size varies by chance."""
    runs = [score_samples(families, draw, reference) for draw in real_draws]
    out: Scores = {}
    for key in runs[0]:
        if key.endswith("_stderr"):
            continue
        values = np.array([run[key] for run in runs], dtype=np.float64)
        out[key] = float(values.mean())
        if len(values) > 1:
            out[f"{key}_std"] = float(values.std(ddof=1))
    return out


def on_data_grid(x: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """Images rounded to the data's grey levels (back in model space); vectors unchanged."""
    if meta["kind"] != "image":
        return x.to(torch.float32)
    levels = meta["num_levels"]
    return to_model_space(from_model_space(x, levels), levels).to(torch.float32)


def to_model_inputs(data: np.ndarray, meta: dict[str, Any]) -> torch.Tensor:
    """Prepared data (grey levels or vectors) in model space, float32."""
    if meta["kind"] != "image":
        return torch.as_tensor(np.asarray(data, dtype=np.float32))
    return torch.as_tensor(to_model_space(data, meta["num_levels"])).to(torch.float32)


def classifier_suite(classifier: torch.nn.Module, num_classes: int, kid_subset_size: int, kid_subsets: int,
                      nearest_k: int, seed: int, batch_size: int = 512) -> MetricSuite:
    """The classifier's features: Frechet distance, KID, precision/recall, density/coverage,
    and the predicted labels' histogram against the reference's predicted labels."""
    def score(samples: torch.Tensor, reference: torch.Tensor) -> Scores:
        f_s = classifier_features(classifier, samples, batch_size)
        f_r = classifier_features(classifier, reference, batch_size)
        kid = metrics.kid(f_s, f_r, num_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
        pr = metrics.precision_recall(f_r, f_s, k=nearest_k)
        dc = metrics.density_coverage(f_r, f_s, k=nearest_k)
        labels = metrics.label_distribution(predict_labels(classifier, samples, batch_size), num_classes,
                                            reference=predict_labels(classifier, reference, batch_size))
        return {
            "fd_classifier": metrics.frechet_distance(f_s, f_r),
            "kid_classifier": kid.value, "kid_classifier_stderr": kid.stderr,
            "precision_classifier": pr.precision, "recall_classifier": pr.recall,
            "density_classifier": dc.density, "coverage_classifier": dc.coverage,
            "classes_covered": float(labels.classes_covered), "label_tv_classifier": labels.tv_distance,
        }

    return MetricSuite("classifier", score)


def raw_suite(seed: int) -> MetricSuite:
    """Distances between the points themselves (vectors): energy distance and sliced
    Wasserstein-1, each with its standard error."""

    def score(samples: torch.Tensor, reference: torch.Tensor) -> Scores:
        energy = metrics.energy_distance(samples, reference)
        sliced = metrics.sliced_wasserstein(samples, reference, seed=seed)
        return {"energy_distance": energy.value, "energy_distance_stderr": energy.stderr,
                "sliced_wasserstein": sliced.value, "sliced_wasserstein_stderr": sliced.stderr}

    return MetricSuite("raw", score)


def inception_suite(weights_path: str, num_levels: int, kid_subset_size: int, kid_subsets: int, seed: int,
                     device: torch.device | str = "cpu") -> MetricSuite:
    """FID, KID and IS of 3-channel images in the features of the user's Inception weights.
    The reference's features are computed once and reused for every set scored against it."""
    cache: dict[tuple[int, tuple[int, ...]], InceptionFeatures] = {}

    def as_bytes(x: torch.Tensor) -> torch.Tensor:
        # Inception takes 8-bit images: grey levels rescaled to 0..255.
        levels = from_model_space(x, num_levels).to(torch.float64)
        return torch.round(levels * 255 / (num_levels - 1)).to(torch.uint8)

    def score(samples: torch.Tensor, reference: torch.Tensor) -> Scores:
        key = (reference.data_ptr(), tuple(reference.shape))
        if key not in cache:
            cache[key] = inception_features(as_bytes(reference), weights_path, device=device)
        result = inception_metrics(as_bytes(samples), cache[key], weights_path, kid_subset_size=kid_subset_size,
                                   kid_subsets=kid_subsets, device=device, seed=seed)
        return {"fid": result["fid"], "kid_inception": result["kid"].value,
                "kid_inception_stderr": result["kid"].stderr,
                "inception_score": result["inception_score"].value,
                "inception_score_stderr": result["inception_score"].stderr}

    return MetricSuite("inception", score)


def score_samples(families: list[MetricSuite], samples: torch.Tensor, reference: torch.Tensor) -> Scores:
    """Every family's metrics of ``samples`` against ``reference`` (model space)."""
    scores: Scores = {}
    for family in families:
        scores.update(family.score(samples, reference))
    return scores


__all__ = [
    "MetricSuite", "classifier_suite", "floor_scores", "inception_suite", "on_data_grid", "raw_suite",
    "real_reference", "score_samples", "to_model_inputs",
]
