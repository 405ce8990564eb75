"""The floor of a sample-quality metric: its value between two independent draws of real data
of the sample size, i.e. what a perfect model would score at that size. Finite-sample metrics
are biased (a Frechet distance is > 0, precision < 1 even for real against real), so a number
means little without its floor beside it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from ddpm.errors import EvaluationError
from ddpm.metrics._features import Features, generator

Result = TypeVar("Result")


def metric_floor(
    metric_fn: Callable[..., Result], real: Features, n: int, seed: int = 0, **metric_kwargs: Any
) -> Result:
    """``metric_fn(first, second, **metric_kwargs)`` for two disjoint random subsets of ``n``
    examples of ``real`` each (rows of an array, e.g. features or labels).

    Disjoint subsets of i.i.d. data are independent draws, which is what a perfect model's
    samples would be. Refuses when ``real`` has fewer than 2 n examples: overlapping subsets
    would share examples and flatter the floor.
    """
    if n < 1:
        raise ValueError(f"the floor's sample size n must be >= 1, got {n}")
    data = torch.as_tensor(real)
    if len(data) < 2 * n:
        raise EvaluationError(
            f"the floor of a metric at n={n} samples needs at least 2n={2 * n} real examples, got {len(data)}; "
            "lower the sample count or use a larger real split"
        )
    perm = torch.randperm(len(data), generator=generator(seed)).to(data.device)
    return metric_fn(data[perm[:n]], data[perm[n:2 * n]], **metric_kwargs)
