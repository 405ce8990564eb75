"""The Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017).

FID is this distance in the pool features of one particular Inception network. In any other
features (a classifier the pipeline trains) it is "a Frechet distance in those features", and
the caller names it so; the numbers are not comparable with published FIDs.
"""

from __future__ import annotations

import torch

from ddpm.metrics._features import Features, as_pair


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric PSD square root, with rounding-level negative eigenvalues clamped to 0."""
    eigvals, eigvecs = torch.linalg.eigh(matrix)
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


def frechet_from_moments(
    mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor, cov_b: torch.Tensor
) -> float:
    """d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})  (Heusel et al. 2017;
    Dowson & Landau 1982), the squared 2-Wasserstein distance between N(mu_a, S_a), N(mu_b, S_b).

    Computed without a general matrix square root: with R = S_a^{1/2}, the matrix S_a S_b =
    R (R S_b) has the same eigenvalues as (R S_b) R = R S_b R (AB and BA share their spectrum),
    and R S_b R is symmetric PSD. So the eigenvalues of S_a S_b are real and >= 0, and
    Tr((S_a S_b)^{1/2}) = sum_i sqrt(lambda_i(R S_b R)), which ``eigvalsh`` gives stably.
    """
    mu_a, mu_b, cov_a, cov_b = (torch.as_tensor(m, dtype=torch.float64) for m in (mu_a, mu_b, cov_a, cov_b))
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    middle = 0.5 * (middle + middle.T)  # symmetric up to rounding; make it exactly so for eigvalsh
    trace_sqrt = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    distance = (mu_a - mu_b).square().sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_sqrt
    # The true value is >= 0; only rounding can push it below.
    return max(distance.item(), 0.0)


def frechet_distance(feats_a: Features, feats_b: Features) -> float:
    """The Frechet distance between Gaussians fitted to two [N, D] feature sets.

    Moments as in the reference FID code (TTUR, pytorch-fid): sample mean and unbiased
    (N - 1) covariance. The estimate is biased upwards by O(D / N), so compare values only at
    equal sample sizes, and next to the floor (``metric_floor``) at that size.
    """
    a, b = as_pair(feats_a, feats_b)
    if min(len(a), len(b)) < 2:
        raise ValueError(f"a covariance needs at least 2 samples per set, got {len(a)} and {len(b)}")
    return frechet_from_moments(a.mean(0), torch.cov(a.T).reshape(a.shape[1], -1),
                                b.mean(0), torch.cov(b.T).reshape(b.shape[1], -1))
