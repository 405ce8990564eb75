"""Two-sample distances for low-dimensional continuous data (the Swiss roll), where the
samples themselves are the features: the energy distance and the sliced Wasserstein distance.
"""

from __future__ import annotations

import torch

from ddpm.metrics._features import (
    Estimate,
    Features,
    as_pair,
    generator,
    mean_and_stderr,
    pairwise_distances,
    row_chunks,
)


def _distance_row_sums(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_j |x_i - y_j| for each i, and sum_i |x_i - y_j| for each j, walked in row chunks."""
    rows_sum = torch.empty(len(x), dtype=x.dtype, device=x.device)
    cols_sum = torch.zeros(len(y), dtype=x.dtype, device=x.device)
    for rows in row_chunks(len(x), len(y)):
        block = pairwise_distances(x[rows], y)
        rows_sum[rows] = block.sum(dim=1)
        cols_sum += block.sum(dim=0)
    return rows_sum, cols_sum


def energy_distance(a: Features, b: Features) -> Estimate:
    """The energy distance E = 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo 2013)
    as its unbiased U-statistic

        2 / (n m) sum_{i,j} |a_i - b_j| - sum_{i != i'} |a_i - a_i'| / (n (n - 1))
                                        - sum_{j != j'} |b_j - b_j'| / (m (m - 1)),

    with its two-sample jackknife standard error (Arvesen 1969). E >= 0, with equality only for
    equal distributions; the estimate can dip below 0 when they are close. Jackknife variances
    are biased upwards (Efron & Stein 1981), so the error is conservative.

    In 1-D, scipy.stats.energy_distance returns sqrt(2 int (F_n - G_m)^2), the square root of
    this formula with biased (V-statistic, over n^2 and m^2) within-set means.
    """
    x, y = as_pair(a, b)
    n, m = len(x), len(y)
    if min(n, m) < 3:
        raise ValueError(f"the energy distance and its jackknife need at least 3 samples per set, got {n} and {m}")
    xy_rows, xy_cols = _distance_row_sums(x, y)
    xx_rows, _ = _distance_row_sums(x, x)
    yy_rows, _ = _distance_row_sums(y, y)
    s_xy, s_xx, s_yy = xy_rows.sum(), xx_rows.sum(), yy_rows.sum()
    value = 2 * s_xy / (n * m) - s_xx / (n * (n - 1)) - s_yy / (m * (m - 1))
    # Leave-one-out statistics: dropping a_i removes row i of the cross sum and row and column
    # i of the symmetric within sum; likewise for b_j.
    loo_x = 2 * (s_xy - xy_rows) / ((n - 1) * m) - (s_xx - 2 * xx_rows) / ((n - 1) * (n - 2)) - s_yy / (m * (m - 1))
    loo_y = 2 * (s_xy - xy_cols) / (n * (m - 1)) - s_xx / (n * (n - 1)) - (s_yy - 2 * yy_rows) / ((m - 1) * (m - 2))
    variance = (n - 1) / n * (loo_x - loo_x.mean()).square().sum() + (m - 1) / m * (loo_y - loo_y.mean()).square().sum()
    return Estimate(value.item(), variance.sqrt().item())


def _wasserstein_1d_pow(u: torch.Tensor, v: torch.Tensor, p: int) -> torch.Tensor:
    """W_p^p between the empirical distributions of each column of u [n, L] and v [m, L].

    W_p^p = int_0^1 |F^-1(q) - G^-1(q)|^p dq. Both quantile functions are step functions
    that change only at q = i / n and q = j / m, so the integral is an exact sum over the
    merged breakpoints (for n = m, the mean of |u_(i) - v_(i)|^p over sorted values).
    """
    n, m = len(u), len(v)
    u, v = u.sort(dim=0).values, v.sort(dim=0).values
    if n == m:
        return (u - v).abs().pow(p).mean(dim=0)
    # Breakpoints as integers over the common denominator n m, so ties merge exactly; on each
    # interval (left, right] between them both quantile functions are constant.
    right = torch.unique(torch.cat([torch.arange(1, n + 1) * m, torch.arange(1, m + 1) * n]))
    left = torch.cat([torch.zeros(1, dtype=right.dtype), right[:-1]])
    widths = (right - left).to(u) / (n * m)
    iu, iv = (left // m).to(u.device), (left // n).to(u.device)
    return ((u[iu] - v[iv]).abs().pow(p) * widths[:, None]).sum(dim=0)


def sliced_wasserstein(a: Features, b: Features, num_projections: int = 128, seed: int = 0, p: int = 1) -> Estimate:
    """The sliced p-Wasserstein distance SW_p = (E_theta W_p^p(theta.a, theta.b))^{1/p} over
    directions theta uniform on the unit sphere (Bonneel et al. 2015; Kolouri et al. 2019),
    estimated with ``num_projections`` random directions; p is 1 or 2.

    The standard error is that of the Monte Carlo average over directions (delta method through
    the 1/p power for p = 2): it measures the choice of directions, not the sampling error of
    the two finite sets, which the floor (``metric_floor``) shows.
    """
    if p not in (1, 2) or num_projections < 2:
        raise ValueError(f"sliced_wasserstein needs p in (1, 2) and num_projections >= 2, got {p}, {num_projections}")
    x, y = as_pair(a, b)
    # Normalized Gaussian vectors are uniform on the sphere.
    directions = torch.randn(x.shape[1], num_projections, generator=generator(seed), dtype=torch.float64)
    directions = (directions / directions.norm(dim=0)).to(x.device)
    powered = mean_and_stderr(_wasserstein_1d_pow(x @ directions, y @ directions, p))
    value = max(powered.value, 0.0) ** (1 / p)
    stderr = powered.stderr if p == 1 or value == 0 else powered.stderr / (2 * value)
    return Estimate(value, stderr)
