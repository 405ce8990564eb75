"""Sampling loops: reproducibility, batch independence, DDIM's limits, respacing, and the
distribution an exact denoiser samples."""

import math

import pytest
import torch
from test_diffusion import gaussian_oracle

from ddpm.diffusion import GaussianDiffusion
from ddpm.sampling.contract import StateRecorder
from ddpm.sampling.ddim import ddim_sample_loop, ddim_step
from ddpm.sampling.respacing import respace, space_timesteps
from ddpm.sampling.runner import draw_samples
from ddpm.schedules import SCHEDULES, get_beta_schedule
from ddpm.seeding import generators

F64 = torch.float64


def setup(T=100, schedule="linear", mean_type="eps"):
    betas = get_beta_schedule(schedule, T)
    return GaussianDiffusion(betas, mean_type=mean_type), gaussian_oracle(betas, 0.2, 0.4, mean_type)


def test_seeded_sampler_reproduces_and_batch_split_does_not_matter():
    d, model = setup()
    shape = (6, 3)
    a = d.p_sample_loop(model, shape, generator=generators(7, "sample", range(6)))
    b = d.p_sample_loop(model, shape, generator=generators(7, "sample", range(6)))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    first = d.p_sample_loop(model, (2, 3), generator=generators(7, "sample", range(2)))
    rest = d.p_sample_loop(model, (4, 3), generator=generators(7, "sample", range(2, 6)))
    torch.testing.assert_close(torch.cat([first, rest]), a, rtol=0, atol=1e-6)
    other = d.p_sample_loop(model, shape, generator=generators(8, "sample", range(6)))
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
    anc = d.p_sample_loop(model, shape, generator=torch.Generator().manual_seed(2), noise=noise, clip_denoised=False)
    ddim = ddim_sample_loop(d, model, shape, eta=1.0, generator=torch.Generator().manual_seed(2), noise=noise,
                            clip_denoised=False)
    torch.testing.assert_close(ddim, anc, rtol=0, atol=2e-5)


@pytest.mark.parametrize("schedule", ["cosine", "jsd"])
def test_ddim_step_with_eta_one_is_the_posterior(schedule):
    """Song et al. Sec. 4.1: with eta = 1 and the true x0, one DDIM step t -> t-1 draws from
    q(x_{t-1} | x_t, x0) (Ho et al. eq. 7): its mean (noise 0) is the posterior mean and its
    noise scale ((x(z) - x(0)) / z) is the posterior std, at every t, also where abar_t = 0."""
    T = 100
    d = GaussianDiffusion(get_beta_schedule(schedule, T), mean_type="x0")
    g = torch.Generator().manual_seed(6)
    x0 = torch.rand(1, 3, generator=g, dtype=F64) * 2 - 1
    z = torch.full((1, 3), 1.5, dtype=F64)
    truth = lambda x_t, t: x0.expand_as(x_t)
    for t in range(1, T):
        x_t = d.q_sample(x0, torch.tensor([t]), generator=g)
        mean, var, _ = d.q_posterior_mean_variance(x0, x_t, torch.tensor([t]))
        at_zero = ddim_step(d, truth, x_t, t, t - 1, eta=1.0, clip_denoised=False, noise=torch.zeros_like(z))
        at_z = ddim_step(d, truth, x_t, t, t - 1, eta=1.0, clip_denoised=False, noise=z)
        torch.testing.assert_close(at_zero["sample"], mean, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close((at_z["sample"] - at_zero["sample"]) / z, var.sqrt(), rtol=1e-9, atol=0)


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
        x = d.p_sample_loop(model, (N, 1), generator=g, clip_denoised=False)
    else:
        x = ddim_sample_loop(d, model, (N, 1), eta=0.0, generator=g, clip_denoised=False)
    se_mean = 0.4 / math.sqrt(N)
    assert abs(x.mean().item() - 0.2) < 5 * se_mean
    assert abs(x.std().item() - 0.4) < 0.01


def std_error_with_steps(sample) -> list[float]:
    return [abs(sample(n).std().item() - 0.4) for n in (50, 200)]


def test_fewer_steps_converge_to_the_data_distribution():
    """DDIM (eta = 0) and respaced ancestral sampling with few steps are biased (the
    discretisation); the bias in the std shrinks as the number of steps grows."""
    T, N = 1000, 20000
    betas = get_beta_schedule("linear", T)
    d = GaussianDiffusion(betas)
    model = gaussian_oracle(betas, 0.2, 0.4, "eps")

    def ddim(n):
        return ddim_sample_loop(d, model, (N, 1), steps=n, generator=torch.Generator().manual_seed(0),
                                clip_denoised=False)

    def ancestral(n):
        spaced, spaced_model = respace(d, space_timesteps(T, n), model)
        return spaced.p_sample_loop(spaced_model, (N, 1), generator=torch.Generator().manual_seed(0),
                                    clip_denoised=False)

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


def test_ddim_reports_the_states_of_its_subsequence():
    d, model = setup(50)
    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(4))
    every, some = StateRecorder(), StateRecorder()
    x = ddim_sample_loop(d, model, (3, 2), steps=[0, 9, 19, 49], noise=noise, on_state=every)
    assert every.keys == [50, 20, 10, 1, 0] and every.stacked().shape == (5, 3, 2)
    assert torch.equal(every.states[0], noise) and torch.equal(every.states[-1], x) and every.states[-1] is not x
    ddim_sample_loop(d, model, (3, 2), steps=[0, 9, 19, 49], noise=noise, states=[0, 50, 10], on_state=some)
    assert some.keys == [50, 10, 0] and torch.equal(some.stacked(), every.stacked()[[0, 2, 4]])
    with pytest.raises(ValueError, match=r"trajectory steps \[25\] are not among the sampler's states"):
        ddim_sample_loop(d, model, (3, 2), steps=[0, 9, 19, 49], noise=noise, states=[25], on_state=some)


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
    a = full.p_sample_loop(full_model, (4, 1), generator=torch.Generator().manual_seed(0))
    b = d.p_sample_loop(model, (4, 1), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


SAMPLERS = {
    "ancestral": {"sampler": "ancestral"},
    "ancestral_respaced": {"sampler": "ancestral", "steps": 7},
    "ddim_eta0": {"sampler": "ddim", "eta": 0.0},
    "ddim_eta1": {"sampler": "ddim", "eta": 1.0},
    "ddim_respaced": {"sampler": "ddim", "steps": 7, "eta": 0.5},
}
MEAN_TYPES = {name: ["x0", "v"] if name == "jsd" else ["eps", "x0", "v"] for name in SCHEDULES}


def oracle_for(betas, m, s, mean_type, var_type):
    """The exact denoiser for x0 ~ N(m, s^2), computed in float64 (1 - abar in float32 loses
    up to 4 digits near abar = 1) and returned in x's dtype; under learned_range it also
    outputs the variance channel (0: halfway between beta_tilde and beta in log space)."""
    oracle = gaussian_oracle(betas, m, s, mean_type)
    mean = lambda x, t: oracle(x.double(), t).to(x.dtype)
    if var_type != "learned_range":
        return mean
    return lambda x, t: torch.cat([mean(x, t), torch.zeros_like(x)], dim=1)


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_every_sampler_on_every_schedule_and_mean_type_is_finite_and_exact_on_a_point(schedule, var_type):
    """Every sampler, schedule (jsd: abar_T = 0) and accepted mean type gives finite samples
    for data N(0.2, 0.4^2); and for data at the single point 0.2, whose exact denoiser predicts
    x0 = 0.2 everywhere, each sampler's last step (abar_prev = 1: x_0 = pred_x0) lands on it."""
    T, N, m = 40, 16, 0.2
    betas = get_beta_schedule(schedule, T)
    loss_type = "vlb" if var_type == "learned_range" else "simple"
    if schedule == "jsd":
        with pytest.raises(ValueError, match="jsd"):
            GaussianDiffusion(betas, mean_type="eps", var_type=var_type, loss_type=loss_type)
    for mean_type in MEAN_TYPES[schedule]:
        d = GaussianDiffusion(betas, mean_type=mean_type, var_type=var_type, loss_type=loss_type)
        for name, kwargs in SAMPLERS.items():
            label = f"{schedule}/{mean_type}/{var_type}/{name}"
            spread, _ = draw_samples(d, oracle_for(betas, m, 0.4, mean_type, var_type), (N, 1), seed=0,
                                     clip_denoised=False, **kwargs)
            assert torch.isfinite(spread).all(), label
            assert spread.std() > 0, label
            point, traj = draw_samples(d, oracle_for(betas, m, 0.0, mean_type, var_type), (N, 1), seed=0,
                                       **kwargs)
            assert torch.isfinite(traj["x"]).all(), label
            # float32 sampling: pred_x0 is m up to a few ulps of the O(1) x_t it is computed from.
            torch.testing.assert_close(point, torch.full((N, 1), m), rtol=0, atol=1e-5, msg=label)


def test_draw_samples_uses_the_sample_stream_and_reports_progress_over_all_batches():
    d, model = setup(50)
    seen = []
    x, _ = draw_samples(d, model, (5, 2), seed=4, batch_size=2, on_step=lambda done, total: seen.append((done, total)))
    direct = d.p_sample_loop(model, (5, 2), generator=generators(4, "sample", range(5)))
    torch.testing.assert_close(x, direct, rtol=0, atol=1e-6)
    assert seen[-1] == (150, 150) and len(seen) == 150  # 3 batches of 50 steps
    assert all(a[0] < b[0] for a, b in zip(seen, seen[1:], strict=False))
