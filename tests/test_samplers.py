"""Sampling loops: reproducibility, batch independence, DDIM's limits, respacing, and the
distribution an exact denoiser samples."""

import math

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import ddim_sample_loop, p_sample_loop, respace, sample_generators, space_timesteps
from ddpm.schedules import get_beta_schedule
from test_diffusion import gaussian_oracle

F64 = torch.float64


def setup(T=100, schedule="linear", mean_type="eps"):
    betas = get_beta_schedule(schedule, T)
    return GaussianDiffusion(betas, mean_type=mean_type), gaussian_oracle(betas, 0.2, 0.4, mean_type)


def test_seeded_sampler_reproduces_and_batch_split_does_not_matter():
    d, model = setup()
    shape = (6, 3)
    a = p_sample_loop(d, model, shape, generator=sample_generators(7, range(6)))
    b = p_sample_loop(d, model, shape, generator=sample_generators(7, range(6)))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    first = p_sample_loop(d, model, (2, 3), generator=sample_generators(7, range(2)))
    rest = p_sample_loop(d, model, (4, 3), generator=sample_generators(7, range(2, 6)))
    torch.testing.assert_close(torch.cat([first, rest]), a, rtol=0, atol=1e-6)
    other = p_sample_loop(d, model, shape, generator=sample_generators(8, range(6)))
    assert (other - a).abs().min() > 0


def test_single_generator_is_reproducible():
    d, model = setup()
    a = d.sample(model, (5, 2), generator=torch.Generator().manual_seed(3))
    b = d.sample(model, (5, 2), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_eta_one_on_full_sequence_is_ancestral_fixed_small(schedule):
    """With eta = 1 DDIM's sigma_t^2 equals beta_tilde_t (Song et al. Sec. 4.1), so with the
    same noise stream it reproduces ancestral sampling with fixed_small variances."""
    d, model = setup(200, schedule)
    shape = (64, 2)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    anc = p_sample_loop(d, model, shape, generator=torch.Generator().manual_seed(2), noise=noise, clip_denoised=False)
    ddim = ddim_sample_loop(d, model, shape, eta=1.0, generator=torch.Generator().manual_seed(2), noise=noise,
                            clip_denoised=False)
    torch.testing.assert_close(ddim, anc, rtol=0, atol=2e-5)


def test_ddim_sigma_formula_equals_posterior_variance():
    d, _ = setup(100, "cosine")
    abar = d.alphas_cumprod
    t = torch.arange(1, 100)
    sigma2 = (1 - abar[t - 1]) / (1 - abar[t]) * (1 - abar[t] / abar[t - 1])
    torch.testing.assert_close(sigma2, d.posterior_variance[1:], rtol=1e-12, atol=0)


def test_ddim_eta_zero_is_deterministic_given_the_noise():
    d, model = setup(100)
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(4))
    a = ddim_sample_loop(d, model, (8, 2), steps=10, eta=0.0, noise=noise, generator=torch.Generator().manual_seed(1))
    b = ddim_sample_loop(d, model, (8, 2), steps=10, eta=0.0, noise=noise, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_exact_denoiser_samples_the_data_distribution(sampler):
    """With the optimal predictor for x0 ~ N(0.2, 0.4^2), T = 1000 steps sample that mean and std."""
    T, N = 1000, 20000
    betas = get_beta_schedule("linear", T)
    d = GaussianDiffusion(betas)
    model = gaussian_oracle(betas, 0.2, 0.4, "eps")
    g = torch.Generator().manual_seed(0)
    if sampler == "ancestral":
        x = p_sample_loop(d, model, (N, 1), generator=g, clip_denoised=False)
    else:
        x = ddim_sample_loop(d, model, (N, 1), eta=0.0, generator=g, clip_denoised=False)
    se_mean = 0.4 / math.sqrt(N)
    assert abs(x.mean().item() - 0.2) < 5 * se_mean
    assert abs(x.std().item() - 0.4) < 0.01


def std_error_with_steps(sample) -> list[float]:
    return [abs(sample(n).std().item() - 0.4) for n in (50, 200)]


def test_fewer_steps_converge_to_the_data_distribution():
    """DDIM (eta = 0) and respaced ancestral sampling with few steps are biased (the
    discretisation); the bias in the std shrinks as the number of steps grows.
    Measured: DDIM 0.025 -> 0.005, ancestral 0.050 -> 0.018 for 50 -> 200 steps."""
    T, N = 1000, 20000
    betas = get_beta_schedule("linear", T)
    d = GaussianDiffusion(betas)
    model = gaussian_oracle(betas, 0.2, 0.4, "eps")

    def ddim(n):
        return ddim_sample_loop(d, model, (N, 1), steps=n, generator=torch.Generator().manual_seed(0), clip_denoised=False)

    def ancestral(n):
        spaced, spaced_model = respace(d, space_timesteps(T, n), model)
        return p_sample_loop(spaced, spaced_model, (N, 1), generator=torch.Generator().manual_seed(0), clip_denoised=False)

    for sample in (ddim, ancestral):
        err50, err200 = std_error_with_steps(sample)
        assert err200 < err50 / 2
        assert abs(sample(50).mean().item() - 0.2) < 5 * 0.4 / math.sqrt(N)


def test_trajectory_capture():
    d, model = setup(50)
    x, traj = d.sample(model, (3, 2), generator=torch.Generator().manual_seed(0), return_trajectory=[50, 25, 0, 10])
    assert traj["steps"] == [50, 25, 10, 0]
    assert traj["x"].shape == (4, 3, 2)
    torch.testing.assert_close(traj["x"][-1], x)
    full_x, full = d.sample(model, (3, 2), generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert full["x"].shape == (51, 3, 2)
    torch.testing.assert_close(full["x"][25], traj["x"][1])
    with pytest.raises(ValueError, match="outside 0..50"):
        d.sample(model, (3, 2), return_trajectory=[51])


def test_respaced_betas_reproduce_retained_alphas_cumprod():
    d, model = setup(1000, "cosine")
    keep = space_timesteps(1000, 50)
    assert keep[0] == 0 and keep[-1] == 999 and len(keep) == 50
    spaced, spaced_model = respace(d, keep, model)
    torch.testing.assert_close(spaced.alphas_cumprod, d.alphas_cumprod[keep], rtol=1e-10, atol=0)
    # The wrapped model sees the original timesteps.
    seen = []
    _, m2 = respace(d, keep, lambda x, t: seen.append(t.clone()) or x)
    m2(torch.zeros(2, 1), torch.tensor([0, 49]))
    assert seen[0].tolist() == [0, 999]
    # Keeping every step is the identity: the same samples as the original process.
    full, full_model = respace(d, range(1000), model)
    a = p_sample_loop(full, full_model, (4, 1), generator=torch.Generator().manual_seed(0))
    b = p_sample_loop(d, model, (4, 1), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
