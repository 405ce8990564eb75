"""k-nearest-neighbour estimates of the real and generated feature manifolds: improved
precision and recall (Kynkaanniemi et al. 2019) and density and coverage (Naeem et al. 2020).

Each sample x of a set carries the ball B(x, NND_k(x)) whose radius is the distance to its k-th
nearest neighbour in its own set; the union of the balls estimates that set's manifold. Balls
are closed (distance <= radius), as in Kynkaanniemi et al.'s definition of f(phi, Phi). All
distances are walked in row chunks, so 10,000 x 10,000 sets need about 128 MB at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddpm.metrics._features import Features, as_pair, pairwise_distances, row_chunks


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float


@dataclass(frozen=True)
class DensityCoverage:
    density: float
    coverage: float


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """NND_k(x_i): the distance from each row to its k-th nearest other row of ``x``."""
    if not 1 <= k < len(x):
        raise ValueError(f"k-NN radii need 1 <= k < the number of samples, got k={k} with {len(x)} samples")
    radii = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for rows in row_chunks(len(x), len(x)):
        # The k + 1 smallest include the point itself at distance 0.
        radii[rows] = pairwise_distances(x[rows], x).topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def _fraction_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """The fraction of ``points`` that lie in at least one ball B(centres_j, radii_j)."""
    inside = 0
    for rows in row_chunks(len(points), len(centres)):
        inside += (pairwise_distances(points[rows], centres) <= radii).any(dim=1).sum().item()
    return inside / len(points)


def precision_recall(real: Features, fake: Features, k: int = 5) -> PrecisionRecall:
    """Improved precision and recall (Kynkaanniemi et al. 2019, sec. 2):
    precision = mean over fake y of f(y, real manifold), recall = mean over real x of
    f(x, fake manifold), with f(phi, Phi) = 1 when phi lies in some ball of Phi."""
    r, f = as_pair(real, fake, ("real", "fake"))
    return PrecisionRecall(
        precision=_fraction_inside(f, r, knn_radii(r, k)),
        recall=_fraction_inside(r, f, knn_radii(f, k)),
    )


def density_coverage(real: Features, fake: Features, k: int = 5) -> DensityCoverage:
    """Density and coverage (Naeem et al. 2020, sec. 3), both from real balls only:
    density = 1 / (k M) sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]  (can exceed 1),
    coverage = 1 / N sum_i 1[exists j: Y_j in B(X_i, NND_k(X_i))],
    for N real samples X and M fake samples Y."""
    r, f = as_pair(real, fake, ("real", "fake"))
    radii = knn_radii(r, k)
    balls_containing = 0
    covered = 0
    for rows in row_chunks(len(r), len(f)):
        inside = pairwise_distances(r[rows], f) <= radii[rows, None]  # [real chunk, fake]
        balls_containing += inside.sum().item()
        covered += inside.any(dim=1).sum().item()
    return DensityCoverage(density=balls_containing / (k * len(f)), coverage=covered / len(r))
