"""Sample-quality metrics against independent computations: closed forms, scipy, and direct
(brute-force) implementations of each paper's definition on small inputs. Statistical checks
use bounds derived from the estimate's own standard error or from a computed expectation."""

import math
from itertools import product

import numpy as np
import pytest
import torch
from scipy import linalg, stats

from ddpm.errors import EvaluationError
from ddpm.metrics import (
    density_coverage,
    energy_distance,
    frechet_distance,
    frechet_from_moments,
    kid,
    label_distribution,
    metric_floor,
    mmd2_unbiased,
    precision_recall,
    sliced_wasserstein,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def random_spd(r: np.random.Generator, d: int) -> np.ndarray:
    m = r.normal(size=(d, d))
    return m @ m.T / d + 0.1 * np.eye(d)


def with_exact_moments(r: np.random.Generator, n: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """n samples whose sample mean and (N - 1) sample covariance are exactly ``mean``, ``cov``."""
    z = r.normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z.T))).T  # sample covariance now I
    return mean + z @ np.linalg.cholesky(cov).T


# --- Frechet distance -------------------------------------------------------------------------


def test_frechet_from_moments_matches_scipy_sqrtm():
    r = rng(1)
    for d in (1, 3, 8):
        mu_a, mu_b = r.normal(size=d), r.normal(size=d)
        cov_a, cov_b = random_spd(r, d), random_spd(r, d)
        ref = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
        ours = frechet_from_moments(*(torch.tensor(m) for m in (mu_a, cov_a, mu_b, cov_b)))
        assert ours == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_frechet_from_moments_closed_forms():
    # 1-D: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2.
    t = torch.tensor
    one_d = frechet_from_moments(t([1.0]), t([[4.0]]), t([-0.5]), t([[0.25]]))
    assert one_d == pytest.approx(1.5**2 + (2.0 - 0.5) ** 2, rel=1e-14)
    # Commuting (diagonal) covariances, one of them singular: sum_i (sqrt(a_i) - sqrt(b_i))^2.
    a, b = np.array([1.0, 0.0, 9.0, 2.0]), np.array([4.0, 0.0, 1.0, 0.0])
    q = linalg.qr(rng(2).normal(size=(4, 4)))[0]  # a shared rotation keeps them commuting
    ours = frechet_from_moments(torch.zeros(4), torch.tensor(q @ np.diag(a) @ q.T),
                                torch.zeros(4), torch.tensor(q @ np.diag(b) @ q.T))
    assert ours == pytest.approx(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-9)


def test_frechet_distance_uses_the_sample_moments():
    r = rng(3)
    d = 5
    mu_a, mu_b = r.normal(size=d), r.normal(size=d)
    cov_a, cov_b = random_spd(r, d), random_spd(r, d)
    a, b = with_exact_moments(r, 200, mu_a, cov_a), with_exact_moments(r, 300, mu_b, cov_b)
    expected = frechet_from_moments(*(torch.tensor(m) for m in (mu_a, cov_a, mu_b, cov_b)))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(torch.tensor(a), torch.tensor(b)) == frechet_distance(a, b)


def test_frechet_distance_of_identical_sets_is_zero():
    x = rng(4).normal(size=(500, 16))
    # Rounding of the two eigen-decompositions only: float64 eps relative to the trace.
    assert 0.0 <= frechet_distance(x, x) < 1e-10 * np.trace(np.cov(x.T))


# --- KID --------------------------------------------------------------------------------------


def test_mmd2_unbiased_matches_a_double_loop():
    r = rng(5)
    x, y = r.normal(size=(5, 3)), r.normal(size=(7, 3)) + 0.3

    def k(u, v):
        return (u @ v / 3 + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in product(range(m), range(m)) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in product(range(n), range(n)) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i, j in product(range(m), range(n))) / (m * n)
    ours = mmd2_unbiased(torch.tensor(x), torch.tensor(y)).item()
    assert ours == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_single_full_subset_is_the_full_mmd2():
    r = rng(6)
    x, y = r.normal(size=(40, 4)), r.normal(size=(40, 4))
    result = kid(x, y, num_subsets=1, subset_size=40)
    assert result.value == pytest.approx(mmd2_unbiased(torch.tensor(x), torch.tensor(y)).item(), rel=1e-12)
    # One subset is one estimate: its standard error is unknown (NaN), not 0, which would claim an exact value.
    assert math.isnan(result.stderr)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_a_shifted_one():
    r = rng(7)
    real, same = r.normal(size=(4000, 8)), r.normal(size=(4000, 8))
    shifted = r.normal(size=(4000, 8)) + 0.3
    # 20 disjoint subsets of 200: independent unbiased estimates, so a 3-standard-error check.
    null = kid(real, same, num_subsets=20, subset_size=200, seed=1)
    assert abs(null.value) < 3 * null.stderr
    alt = kid(real, shifted, num_subsets=20, subset_size=200, seed=1)
    assert alt.value > 10 * alt.stderr


def test_kid_refuses_too_few_samples():
    x = rng(8).normal(size=(50, 4))
    with pytest.raises(EvaluationError, match=r"KID needs at least subset_size=100 samples per set, got 50 and 50"):
        kid(x, x, num_subsets=10, subset_size=100)


# --- precision, recall, density, coverage -----------------------------------------------------


def brute_force_manifold(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """The four metrics straight from the definitions, with explicit loops."""

    def radii(x):
        return np.array([np.sort([np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i])[k - 1]
                         for i in range(len(x))])

    def dist(u, v):
        return np.linalg.norm(u - v)

    r_real, r_fake = radii(real), radii(fake)
    in_real = [[dist(y, x) <= r for x, r in zip(real, r_real, strict=True)] for y in fake]  # [fake][real]
    in_fake = [[dist(x, y) <= r for y, r in zip(fake, r_fake, strict=True)] for x in real]
    return {
        "precision": np.mean([any(row) for row in in_real]),
        "recall": np.mean([any(row) for row in in_fake]),
        "density": np.sum(in_real) / (k * len(fake)),
        "coverage": np.mean([any(in_real[j][i] for j in range(len(fake))) for i in range(len(real))]),
    }


@pytest.mark.parametrize("k", [1, 3, 5])
def test_manifold_metrics_match_brute_force(k, monkeypatch):
    monkeypatch.setattr("ddpm.metrics._features._CHUNK_BYTES", 8 * 40 * 7)  # several row chunks
    r = rng(9)
    real, fake = r.normal(size=(40, 4)), 0.8 * r.normal(size=(30, 4)) + 0.4
    ref = brute_force_manifold(real, fake, k)
    pr, dc = precision_recall(real, fake, k), density_coverage(real, fake, k)
    # Counts of a finite set: exact equality.
    assert (pr.precision, pr.recall, dc.density, dc.coverage) == pytest.approx(
        (ref["precision"], ref["recall"], ref["density"], ref["coverage"]), rel=1e-15)


def test_manifold_metrics_known_cases():
    real = rng(10).normal(size=(200, 6))
    pr, dc = precision_recall(real, real), density_coverage(real, real)
    assert pr.precision == pr.recall == dc.coverage == 1.0
    # Each closed ball holds its centre and exactly k neighbours (no ties in continuous data).
    assert dc.density == pytest.approx(6 / 5, rel=1e-15)
    far = real + 1000.0
    pr, dc = precision_recall(real, far), density_coverage(real, far)
    assert pr.precision == pr.recall == dc.density == dc.coverage == 0.0


# --- label distribution -----------------------------------------------------------------------


def test_label_distribution():
    labels = torch.tensor([0, 0, 1, 1, 1, 3])
    probs = torch.nn.functional.one_hot(labels, 4).double() * 0.7 + 0.1
    reference = torch.tensor([0, 1, 2, 3])
    for samples in (labels, probs):
        result = label_distribution(samples, 4, reference=reference)
        assert result.histogram == pytest.approx((2 / 6, 3 / 6, 0.0, 1 / 6), rel=1e-15)
        assert result.classes_covered == 3
        # Half the L1 distance: |1/3 - 1/4| + |1/2 - 1/4| + |0 - 1/4| + |1/6 - 1/4|.
        assert result.tv_distance == pytest.approx(0.5 * (1 / 12 + 1 / 4 + 1 / 4 + 1 / 12), rel=1e-14)
    assert label_distribution(labels, 4).tv_distance is None
    with pytest.raises(ValueError, match="labels must lie in 0..3"):
        label_distribution(torch.tensor([0, 4]), 4)


# --- energy distance --------------------------------------------------------------------------


def direct_energy(x: np.ndarray, y: np.ndarray) -> float:
    n, m = len(x), len(y)
    d = lambda u, v: np.linalg.norm(u[:, None] - v[None], axis=-1)
    return 2 * d(x, y).mean() - d(x, x).sum() / (n * (n - 1)) - d(y, y).sum() / (m * (m - 1))


def test_energy_distance_matches_the_direct_formula_and_leave_one_out_jackknife():
    r = rng(11)
    x, y = r.normal(size=(6, 2)), r.normal(size=(8, 2)) + 0.5
    result = energy_distance(x, y)
    assert result.value == pytest.approx(direct_energy(x, y), rel=1e-12)
    loo_x = np.array([direct_energy(np.delete(x, i, 0), y) for i in range(6)])
    loo_y = np.array([direct_energy(x, np.delete(y, j, 0)) for j in range(8)])
    var = 5 / 6 * np.sum((loo_x - loo_x.mean()) ** 2) + 7 / 8 * np.sum((loo_y - loo_y.mean()) ** 2)
    assert result.stderr == pytest.approx(math.sqrt(var), rel=1e-9)


def test_energy_distance_in_1d_matches_scipy():
    # scipy: sqrt(2 int (F - G)^2) = sqrt of the V-statistic (within-set sums over n^2, m^2).
    r = rng(12)
    u, v = r.normal(size=50), r.exponential(size=70)
    s_uu, s_vv = np.abs(u[:, None] - u).sum(), np.abs(v[:, None] - v).sum()
    n, m = len(u), len(v)
    v_stat = stats.energy_distance(u, v) ** 2
    u_stat = v_stat + s_uu * (1 / n**2 - 1 / (n * (n - 1))) + s_vv * (1 / m**2 - 1 / (m * (m - 1)))
    assert energy_distance(u[:, None], v[:, None]).value == pytest.approx(u_stat, rel=1e-10)


def test_energy_distance_of_1d_gaussians_matches_its_closed_form():
    # X ~ N(0, 1), Y ~ N(delta, 1): X - Y ~ N(-delta, 2), X - X' ~ N(0, 2), and for Z ~ N(mu, s^2)
    # E|Z| = s sqrt(2 / pi) exp(-mu^2 / (2 s^2)) + mu (1 - 2 Phi(-mu / s)).
    delta, s = 0.7, math.sqrt(2)
    def abs_mean(mu: float) -> float:
        return s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s**2)) + mu * (1 - 2 * stats.norm.cdf(-mu / s))

    expected = 2 * abs_mean(delta) - 2 * abs_mean(0.0)
    r = rng(13)
    x, y, y_same = r.normal(size=(2000, 1)), r.normal(size=(2000, 1)) + delta, r.normal(size=(2000, 1))
    alt = energy_distance(x, y)
    assert abs(alt.value - expected) < 3 * alt.stderr
    null = energy_distance(x, y_same)
    assert abs(null.value) < 3 * null.stderr and alt.value > 10 * alt.stderr


# --- sliced Wasserstein -----------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(60, 60), (45, 70)])
def test_sliced_wasserstein_in_1d_is_the_exact_w1(sizes):
    r = rng(14)
    u, v = r.normal(size=sizes[0]), r.gamma(2.0, size=sizes[1])
    result = sliced_wasserstein(u[:, None], v[:, None], num_projections=16)
    assert result.value == pytest.approx(stats.wasserstein_distance(u, v), rel=1e-12)
    assert result.stderr < 1e-14  # the only directions are +1 and -1, which give the same W1


def test_sliced_w2_for_unequal_sizes_matches_replicated_samples():
    # Repeating each of n samples m times and each of m samples n times leaves both
    # distributions unchanged and makes the sizes equal, where W2^2 is a sorted pairing.
    r = rng(15)
    u, v = r.normal(size=7), r.normal(size=5) + 1.0
    uu, vv = np.sort(np.repeat(u, 5)), np.sort(np.repeat(v, 7))
    result = sliced_wasserstein(u[:, None], v[:, None], num_projections=4, p=2)
    assert result.value == pytest.approx(math.sqrt(np.mean((uu - vv) ** 2)), rel=1e-12)


@pytest.mark.parametrize("p, expected", [(1, 2 / math.pi), (2, 1 / math.sqrt(2))])
def test_sliced_wasserstein_of_a_translated_set(p, expected):
    # b = a + delta: each projection's W_p is exactly |theta.delta|; over directions uniform on
    # the circle E|cos| = 2 / pi and E cos^2 = 1 / 2, times |delta| = 1 here.
    a = rng(16).normal(size=(300, 2))
    result = sliced_wasserstein(a, a + np.array([0.6, 0.8]), num_projections=500, seed=3, p=p)
    assert abs(result.value - expected) < 3 * result.stderr


# --- floors and bad input ---------------------------------------------------------------------


def test_metric_floor_draws_disjoint_subsets_and_refuses_small_real_sets():
    real = np.arange(30.0)[:, None]
    first, second = metric_floor(lambda a, b: (a, b), real, n=10, seed=1)
    assert len(first) == len(second) == 10
    assert not set(first[:, 0].tolist()) & set(second[:, 0].tolist())
    with pytest.raises(EvaluationError, match=r"at n=20 samples needs at least 2n=40 real examples, got 30"):
        metric_floor(frechet_distance, real, n=20)


def test_floors_are_near_zero_next_to_a_different_distribution():
    r = rng(17)
    d, n = 8, 2000
    real, fake = r.normal(size=(2 * n, d)), r.normal(size=(n, d)) + 0.5
    # Expected Frechet distance between two size-n samples of N(0, I): 2 D / n from the means,
    # ~ D (D + 1) / (2 n) from the covariances (sample-covariance entries have variance 2 / n,
    # 1 / n); twice that bounds the fluctuation, and it is far below the shifted set's ~D / 4.
    floor = metric_floor(frechet_distance, real, n=n, seed=1)
    assert 0 < floor < 2 * (2 * d / n + d * (d + 1) / (2 * n)) < 0.1 * frechet_distance(real[:n], fake)
    kid_floor = metric_floor(kid, real, n=n, seed=1, num_subsets=10, subset_size=200)
    assert abs(kid_floor.value) < 3 * kid_floor.stderr
    energy_floor = metric_floor(energy_distance, real[:, :2], n=n, seed=1)
    assert abs(energy_floor.value) < 3 * energy_floor.stderr < energy_distance(real[:n, :2], fake[:, :2]).value
    labels = r.integers(0, 10, size=2 * n)
    tv_floor = metric_floor(lambda a, b: label_distribution(a, 10, reference=b).tv_distance, labels, n=n)
    assert 0 < tv_floor < 0.1


def test_bad_features_are_refused():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="different feature sizes: 3 and 2"):
        frechet_distance(x, np.zeros((10, 2)))
    with pytest.raises(ValueError, match=r"\[N, D\] array"):
        precision_recall(np.zeros(10), x)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(EvaluationError, match="fake contains NaN"):
        density_coverage(x, bad)
