"""Shared plumbing for the metrics: feature arrays in, float64 tensors out; one small result type."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ddpm import seeding
from ddpm.errors import EvaluationError

Features = torch.Tensor | np.ndarray

# Bytes of float64 distances held at once when a distance matrix is walked in row chunks, so
# 10,000 x 10,000 comparisons stay near this size instead of 800 MB.
_CHUNK_BYTES = 128 * 2**20


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate and its standard error (what that error covers is documented by
    the function that returns it)."""

    value: float
    stderr: float


def as_features(x: Features, name: str) -> torch.Tensor:
    """``x`` as a float64 tensor of shape [N, D] (kept on its device); raises for other shapes.

    Non-finite features (a diverged model's samples) raise ``EvaluationError``: no metric of
    them means anything, and the user fixes it upstream.
    """
    t = torch.as_tensor(x).to(torch.float64)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array of features, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise EvaluationError(f"{name} contains NaN or infinite features; cannot score them")
    return t


def as_pair(a: Features, b: Features, names: tuple[str, str] = ("feats_a", "feats_b")) -> tuple[torch.Tensor, ...]:
    """Both sets as float64 [N, D] tensors on ``a``'s device, checked to share D."""
    ta, tb = as_features(a, names[0]), as_features(b, names[1])
    if ta.shape[1] != tb.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} have different feature sizes: {ta.shape[1]} and {tb.shape[1]}")
    return ta, tb.to(ta.device)


def row_chunks(num_rows: int, num_cols: int) -> Iterator[slice]:
    """Row slices such that a [rows, num_cols] float64 block fits in ``_CHUNK_BYTES``."""
    step = max(1, _CHUNK_BYTES // (8 * max(1, num_cols)))
    for start in range(0, num_rows, step):
        yield slice(start, min(start + step, num_rows))


def pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [len(a), len(b)], computed from the differences.

    torch.cdist's default matmul path forms |a|^2 + |b|^2 - 2 a.b, whose cancellation leaves a
    point ~1e-8 away from itself even in float64; the k-NN metrics compare a distance with a
    radius that is itself a distance, so they need the direct (exact-to-rounding) kernel.
    """
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def mean_and_stderr(values: torch.Tensor) -> Estimate:
    """Mean of independent draws and its standard error std / sqrt(n); NaN for a single draw,
    which has no spread to estimate one from (0 would claim an exact value)."""
    n = values.numel()
    stderr = values.std().item() / n**0.5 if n > 1 else math.nan
    return Estimate(values.mean().item(), stderr)


def generator(seed: int) -> torch.Generator:
    """A CPU generator: random indices and directions are drawn on the CPU so a seed gives the
    same draws on every device."""
    return seeding.generator(int(seed), "metrics")
