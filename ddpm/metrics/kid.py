"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs", sec. 4): the
unbiased estimate of the squared MMD with the cubic polynomial kernel, averaged over subsets.

As with the Frechet distance, the name KID belongs to Inception features; in other features
the caller says whose features they are.
"""

from __future__ import annotations

import torch

from ddpm.errors import EvaluationError
from ddpm.metrics._features import Estimate, Features, as_pair, generator, mean_and_stderr


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x.y / d + 1)^3, d the feature size (Binkowski et al. 2018, sec. 4)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The unbiased MMD^2 U-statistic (Gretton et al. 2012, eq. 3):
    sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
    - 2 sum_{i, j} k(x_i, y_j) / (m n)."""
    m, n = len(x), len(y)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return within_x + within_y - 2 * k_xy.mean()


def kid(
    feats_a: Features, feats_b: Features, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> Estimate:
    """KID: the mean of ``mmd2_unbiased`` over ``num_subsets`` pairs of random subsets of
    ``subset_size`` samples from each set, and the standard error of that mean.

    Subset s is block (s mod B) of a random permutation of each set, B = N // subset_size, and
    the permutation is redrawn every B subsets. So while num_subsets <= B the subsets are
    disjoint, each MMD^2 is an independent unbiased estimate, and the standard error covers the
    sampling error of the data. Beyond that, subsets reuse samples (as in the reference code,
    which draws every subset independently) and the standard error understates it. A single
    subset (``num_subsets=1``: say kid_subset_size = sample.num_samples, one MMD^2 over all the
    samples) is a valid estimate without a standard error: stderr is NaN.
    """
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"KID needs num_subsets >= 1 and subset_size >= 2, got {num_subsets} and {subset_size}")
    a, b = as_pair(feats_a, feats_b)
    if min(len(a), len(b)) < subset_size:
        raise EvaluationError(
            f"KID needs at least subset_size={subset_size} samples per set, got {len(a)} and {len(b)}; "
            "lower the subset size or draw more samples"
        )
    g = generator(seed)
    blocks_a, blocks_b = len(a) // subset_size, len(b) // subset_size
    estimates = []
    for s in range(num_subsets):
        if s % blocks_a == 0:
            perm_a = torch.randperm(len(a), generator=g).to(a.device)
        if s % blocks_b == 0:
            perm_b = torch.randperm(len(b), generator=g).to(b.device)
        block_a, block_b = s % blocks_a, s % blocks_b
        x = a[perm_a[block_a * subset_size:(block_a + 1) * subset_size]]
        y = b[perm_b[block_b * subset_size:(block_b + 1) * subset_size]]
        estimates.append(mmd2_unbiased(x, y))
    return mean_and_stderr(torch.stack(estimates))
