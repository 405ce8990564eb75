"""Distribution functions against independent computations (torch.distributions, scipy)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ddpm.likelihood import (
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    log_normal_mass,
    normal_kl,
)


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = (torch.randn(100, generator=g, dtype=torch.float64) for _ in range(2))
    lv1, lv2 = (3 * torch.randn(100, generator=g, dtype=torch.float64) for _ in range(2))
    ours = normal_kl(m1, lv1, m2, lv2)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_gaussian_log_likelihood_matches_scipy():
    x = np.linspace(-3, 3, 13)
    ours = gaussian_log_likelihood(torch.tensor(x), torch.tensor(0.3, dtype=torch.float64),
                                   torch.tensor(math.log(0.7), dtype=torch.float64))
    np.testing.assert_allclose(ours.numpy(), stats.norm(0.3, 0.7).logpdf(x), rtol=1e-12)


def grid(K: int) -> torch.Tensor:
    return 2 * torch.arange(K, dtype=torch.float64) / (K - 1) - 1


@pytest.mark.parametrize("K", [2, 17, 256])
@pytest.mark.parametrize("mean, scale", [
    (0.0, 0.5), (0.37, 1e-3), (-0.99, 0.02), (1.0, 3.0), (0.5, 1e-8), (-0.2, 1e3),
    (50.0, 0.1), (-1e6, 1e-4), (1e6, 1.0), (0.123, 1e-30),
])
def test_decoder_masses_sum_to_one_and_are_finite(K, mean, scale):
    x = grid(K)
    logp = discretized_gaussian_log_likelihood(x, torch.tensor(mean), torch.tensor(math.log(scale)), K)
    assert torch.isfinite(logp).all()
    assert logp.dtype == torch.float64
    assert torch.logsumexp(logp, 0).item() == pytest.approx(0.0, abs=1e-9)


def test_decoder_masses_random_means_and_scales():
    g = torch.Generator().manual_seed(1)
    K = 256
    means = 4 * torch.randn(64, 1, generator=g, dtype=torch.float64)
    log_scales = -12 + 14 * torch.rand(64, 1, generator=g, dtype=torch.float64)
    logp = discretized_gaussian_log_likelihood(grid(K).expand(64, K), means, log_scales, K)
    assert torch.isfinite(logp).all()
    torch.testing.assert_close(torch.logsumexp(logp, 1), torch.zeros(64, dtype=torch.float64), atol=1e-9, rtol=0)


@pytest.mark.parametrize("K", [17, 256])
def test_decoder_matches_scipy_cdf_differences(K):
    mean, scale = 0.21, 0.15
    x = grid(K).numpy()
    d = 1 / (K - 1)
    upper = np.where(x > 1 - d, np.inf, x + d)
    lower = np.where(x < -1 + d, -np.inf, x - d)
    ref = stats.norm(mean, scale).cdf(upper) - stats.norm(mean, scale).cdf(lower)
    ours = discretized_gaussian_log_likelihood(torch.tensor(x), torch.tensor(mean, dtype=torch.float64),
                                               torch.tensor(math.log(scale), dtype=torch.float64), K)
    keep = ref > 1e-300
    np.testing.assert_allclose(ours.numpy()[keep], np.log(ref[keep]), rtol=1e-9)


def test_decoder_far_tail_matches_asymptotic_mass():
    # A bucket 40 standard deviations above the mean: Phi(-40) - Phi(-40.1) is ~1e-350,
    # far below float64's range, but its log is finite and equal to scipy's logsf difference.
    a, b = 40.0, 40.1
    ours = log_normal_mass(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).item()
    la, lb = stats.norm.logsf(a), stats.norm.logsf(b)
    ref = la + math.log1p(-math.exp(lb - la))
    assert ours == pytest.approx(ref, rel=1e-10)


def test_decoder_gradients_are_finite_at_extremes():
    # Means 30 units off the grid at scale 1e-4 (z ~ 3e5). torch's log_ndtr gradient is
    # accurate to |z| ~ 1e5-1e6 and degrades beyond ~1e8, far outside what training meets
    # (decoder scales ~1e-2, network outputs of order 1).
    K = 256
    mean = torch.tensor([-30.0, 0.0, 30.0], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor([math.log(1e-4), math.log(1e-4), 5.0], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([1.0, 0.0039215686, -1.0], dtype=torch.float64)
    discretized_gaussian_log_likelihood(x, mean, log_scale, K).sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()


def test_decoder_rejects_bad_num_levels():
    with pytest.raises(ValueError, match="num_levels=1"):
        discretized_gaussian_log_likelihood(torch.zeros(1), torch.zeros(1), torch.zeros(1), 1)
