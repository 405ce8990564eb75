"""GaussianDiffusion against independent computations: Monte Carlo composition of the
one-step kernels, brute-force Bayes on a grid, and analytic optimal denoisers on data whose
distribution is known exactly."""

import math

import numpy as np
import pytest
import torch

from ddpm.diffusion import BOUND_NOISE_BLOCK_VALUES, GaussianDiffusion, bound_strata_edges
from ddpm.schedules import SCHEDULES, get_beta_schedule
from ddpm.seeding import StepNoise, generators

F64 = torch.float64


def make(T=100, schedule="linear", **kw):
    return GaussianDiffusion(get_beta_schedule(schedule, T), **kw)


# ---------------------------------------------------------------- forward process
@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_q_sample_moments_equal_composed_one_step_transitions(schedule):
    T, N = 50, 200_000
    d = make(T, schedule)
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.8, -0.3, 0.0], dtype=F64)
    betas = d.betas.numpy()
    t_check = {4, 24, 49}
    # Chain x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z one step at a time (Ho et al. eq. 2).
    x = x0.expand(N, 3).clone()
    for t in range(T):
        x = math.sqrt(1 - betas[t]) * x + math.sqrt(betas[t]) * torch.randn(N, 3, generator=g, dtype=F64)
        if t in t_check:
            direct = d.q_sample(x0.expand(N, 3), torch.full((N,), t), generator=g)
            for a, b in ((x, direct),):
                se_mean = torch.sqrt(a.var(0) / N + b.var(0) / N)
                assert (a.mean(0) - b.mean(0)).abs().max() < 5 * se_mean.max()
                var_a, var_b = a.var(0), b.var(0)
                se_var = torch.sqrt(2 * var_a**2 / (N - 1) + 2 * var_b**2 / (N - 1))
                assert ((var_a - var_b).abs() < 5 * se_var).all()


def test_q_mean_variance_closed_form():
    d = make(1000)
    abar = np.cumprod(1 - d.betas.numpy())
    x0 = torch.linspace(-1, 1, 5, dtype=F64)
    t = torch.tensor([0, 10, 100, 500, 999])
    mean, var, logvar = d.q_mean_variance(x0, t)
    np.testing.assert_allclose(mean.numpy(), np.sqrt(abar[t]) * x0.numpy(), rtol=1e-13)
    np.testing.assert_allclose(var.numpy(), 1 - abar[t], rtol=1e-12)
    np.testing.assert_allclose(logvar.numpy(), np.log1p(-abar[t]), rtol=1e-12)


# ---------------------------------------------------------------- posterior
@pytest.mark.parametrize("schedule", ["linear", "cosine", "quadratic"])
@pytest.mark.parametrize("t", [1, 2, 37, 99])
def test_posterior_equals_brute_force_bayes(schedule, t):
    """q(x_{t-1} | x_t, x0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x0); integrate it on a grid."""
    d = make(100, schedule)
    betas = d.betas.numpy()
    abar = np.cumprod(1 - betas)
    x0, xt = 0.6, -0.4
    # The density of x_{t-1} given x0 (eq. 4, one step earlier) times the one-step kernel (eq. 2).
    mean_prev, var_prev = math.sqrt(abar[t - 1]) * x0, 1 - abar[t - 1]
    # A grid fine enough for the narrowest posterior here (std ~ 7e-3) and wide enough to
    # hold it wherever the two factors put it.
    grid = np.linspace(-15.0, 15.0, 6_000_001)
    log_w = (-(grid - mean_prev) ** 2 / (2 * var_prev)
             - (xt - math.sqrt(1 - betas[t]) * grid) ** 2 / (2 * betas[t]))
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    bf_mean = (w * grid).sum()
    bf_var = (w * (grid - bf_mean) ** 2).sum()
    mean, var, logvar = d.q_posterior_mean_variance(
        torch.tensor([x0], dtype=F64), torch.tensor([xt], dtype=F64), torch.tensor([t]))
    assert mean.item() == pytest.approx(bf_mean, rel=1e-7, abs=1e-10)
    assert var.item() == pytest.approx(bf_var, rel=1e-6)
    assert logvar.item() == pytest.approx(math.log(bf_var), abs=1e-6)


def test_posterior_at_first_step_is_x0_with_clipped_log_variance():
    d = make(100)
    x0, xt = torch.tensor([0.3], dtype=F64), torch.tensor([1.7], dtype=F64)
    mean, var, logvar = d.q_posterior_mean_variance(x0, xt, torch.tensor([0]))
    assert mean.item() == pytest.approx(0.3, abs=1e-13)
    assert var.item() == 0.0
    assert logvar.item() == pytest.approx(math.log(d.posterior_variance[1].item()))


# ---------------------------------------------------------------- parameterisations
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_eps_x0_v_round_trips(schedule):
    d = make(1000, schedule)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(64, 3, generator=g, dtype=F64) * 2 - 1
    eps = torch.randn(64, 3, generator=g, dtype=F64)
    t = torch.randint(0, 1000, (64,), generator=g)
    xt = d.q_sample(x0, t, noise=eps)
    torch.testing.assert_close(d.predict_x0_from_eps(xt, t, eps), x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(d.predict_eps_from_x0(xt, t, x0), eps, rtol=0, atol=1e-9)
    v = d.predict_v(x0, t, eps)
    torch.testing.assert_close(d.predict_x0_from_v(xt, t, v), x0, rtol=0, atol=1e-12)
    # v written independently: v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022).
    abar = torch.cumprod(1 - d.betas, 0)[t][:, None]
    torch.testing.assert_close(v, abar.sqrt() * eps - (1 - abar).sqrt() * x0)


def test_eps_from_x0_is_finite_where_alphas_cumprod_reaches_zero():
    """jsd's last beta is 1, so abar_T = 0 and x_T = eps exactly (eq. 4): the eps implied by
    any x0 is x_T there. Elsewhere it inverts eq. 4 as on the other schedules."""
    d = make(50, "jsd", mean_type="v")
    assert d.alphas_cumprod[-1].item() == 0.0
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(49, 3, generator=g, dtype=F64) * 2 - 1
    eps = torch.randn(49, 3, generator=g, dtype=F64)
    t = torch.arange(49)
    torch.testing.assert_close(d.predict_eps_from_x0(d.q_sample(x0, t, noise=eps), t, x0), eps, rtol=0, atol=1e-9)
    last = torch.full((49,), 49)
    x_T = d.q_sample(x0, last, noise=eps)
    torch.testing.assert_close(x_T, eps, rtol=0, atol=0)
    torch.testing.assert_close(d.predict_eps_from_x0(x_T, last, x0), eps, rtol=0, atol=0)
    torch.testing.assert_close(d.predict_eps_from_x0(x_T, last, -x0), eps, rtol=0, atol=0)


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_p_mean_variance_is_posterior_at_true_prediction(mean_type):
    """Fed the true eps / x0 / v, the reverse mean equals the true posterior mean."""
    d = make(200, mean_type=mean_type)
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(32, 4, generator=g, dtype=F64) * 2 - 1
    eps = torch.randn(32, 4, generator=g, dtype=F64)
    t = torch.randint(0, 200, (32,), generator=g)
    xt = d.q_sample(x0, t, noise=eps)
    out = d.p_mean_variance(None, xt, t, clip_denoised=False, model_output=d.training_target(x0, t, eps))
    true_mean, true_var, true_logvar = d.q_posterior_mean_variance(x0, xt, t)
    torch.testing.assert_close(out["mean"], true_mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(out["pred_x0"], x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(out["log_variance"], true_logvar)


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                 reason="needs a CUDA device")])]


@pytest.mark.parametrize("device", DEVICES)
def test_p_mean_variance_under_bf16_autocast_is_full_precision_math_on_the_bf16_output(device):
    """Under bf16 autocast (training, the bound probe) the network's output is bf16, and the
    diffusion math on it runs in x_t's float32 from the float64 tables (DESIGN.md: the network
    may run in low precision, the diffusion math never does): the mean equals Ho et al.'s
    eqs. 11/7 computed here in float64 from that same bf16 output, to float32 rounding."""
    T = 100
    betas = get_beta_schedule("linear", T)
    d = GaussianDiffusion(betas)
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1).to(device)  # default (non-zero) init: an O(1) eps
    x = torch.randn(8, 1, 8, 8, generator=g).to(device)
    t = torch.tensor([1, 3, 10, 25, 50, 75, 90, 99], device=device)
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        out = d.p_mean_variance(lambda x_t, _: conv(x_t), x, t)
        eps = conv(x)
    assert eps.dtype == torch.bfloat16  # the network really ran in bf16
    assert out["mean"].dtype == out["log_variance"].dtype == torch.float32
    assert torch.equal(out["model_output"], eps.float())
    # Ho et al. eqs. 4 (solved for x0), 6 and 7, in float64, independently of the tables.
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    at = lambda v: v[t.cpu()].reshape(-1, 1, 1, 1)
    x64, eps64 = x.cpu().double(), eps.cpu().double()
    a, b = 1 / at(abar).sqrt(), (1 / at(abar) - 1).sqrt()
    pred_x0 = (a * x64 - b * eps64).clamp(-1, 1)
    c1 = at(betas) * at(abar_prev).sqrt() / (1 - at(abar))
    c2 = (1 - at(abar_prev)) * (1 - at(betas)).sqrt() / (1 - at(abar))
    mean = c1 * pred_x0 + c2 * x64
    log_var = torch.log(at(betas) * (1 - at(abar_prev)) / (1 - at(abar))).expand_as(x64)
    # float32 arithmetic: pred_x0 = a x - b eps rounds the two coefficients, the two products
    # and the difference, each by at most u = 2^-24 of the largest operand (3 u (|a x| + |b eps|)
    # to first order; clamping is 1-Lipschitz); the mean adds c1 times that and 3 u (|c1 pred_x0|
    # + |c2 x|) for its own roundings. 4 u covers the second-order terms. The same math in bf16
    # (8 bits) would be off by about 2^-9 of those terms: 10^4 times more.
    u = 2.0**-24
    bound = 4 * u * (c1 * (a * x64.abs() + b * eps64.abs()) + c1 * pred_x0.abs() + c2 * x64.abs())
    worst = ((out["mean"].cpu().double() - mean).abs() / bound).max().item()
    assert worst <= 1, f"the mean is off by {worst:.3g} times the float32 bound"
    torch.testing.assert_close(out["pred_x0"].cpu().double(), pred_x0, rtol=0,
                               atol=(4 * u * (a * x64.abs() + b * eps64.abs())).max().item())
    # One float32 rounding of the float64 table value (2^-23: the table's own last-bit
    # difference from this formula can move a rounding by one float32 step).
    torch.testing.assert_close(out["log_variance"].cpu().double(), log_var, rtol=2.0**-23, atol=0)


def test_variance_types():
    T = 50
    betas = get_beta_schedule("linear", T)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    beta_tilde = betas * (1 - abar_prev) / (1 - abar)
    t = torch.arange(T)
    x = torch.zeros(T, 2, dtype=F64)
    small = GaussianDiffusion(betas, var_type="fixed_small").p_mean_variance(lambda x, t: x, x, t)
    large = GaussianDiffusion(betas, var_type="fixed_large").p_mean_variance(lambda x, t: x, x, t)
    torch.testing.assert_close(small["variance"][:, 0], beta_tilde)
    torch.testing.assert_close(large["variance"][1:, 0], betas[1:])
    # DDPM uses beta_tilde_1 (of paper step 2) at the first step for both.
    assert large["variance"][0, 0].item() == pytest.approx(beta_tilde[1].item())
    assert small["log_variance"][0, 0].item() == pytest.approx(math.log(beta_tilde[1].item()))
    learned = GaussianDiffusion(betas, var_type="learned_range", loss_type="hybrid")
    for v, expect in ((1.0, torch.log(betas)), (-1.0, small["log_variance"][:, 0])):
        out = learned.p_mean_variance(None, x, t, model_output=torch.cat([x, torch.full_like(x, v)], 1))
        torch.testing.assert_close(out["log_variance"][:, 0], expect)
    mid = learned.p_mean_variance(None, x, t, model_output=torch.cat([x, torch.zeros_like(x)], 1))
    torch.testing.assert_close(mid["log_variance"][:, 0], 0.5 * (torch.log(betas) + small["log_variance"][:, 0]))


# ---------------------------------------------------------------- analytic oracles
def gaussian_oracle(betas: torch.Tensor, m: float, s: float, mean_type: str, scale: float = 1.0):
    """Optimal predictor for x0 ~ N(m, s^2) per dimension, written from the Gaussian
    conditional E[x0 | x_t] = m + a s^2 / (a^2 s^2 + sigma^2) (x_t - a m)."""
    abar_all = np.cumprod(1 - betas.numpy())

    def model(x_t, t):
        abar = torch.as_tensor(abar_all, dtype=x_t.dtype)[t].reshape(-1, *([1] * (x_t.ndim - 1)))
        a, sig2 = abar.sqrt(), 1 - abar
        ex0 = m + a * s**2 / (a**2 * s**2 + sig2) * (x_t - a * m)
        eps = (x_t - a * ex0) / sig2.sqrt()
        out = {"eps": eps, "x0": ex0, "v": a * eps - sig2.sqrt() * ex0}[mean_type]
        return scale * out

    return model


def discrete_oracle(betas: torch.Tensor, levels: torch.Tensor, pmf: torch.Tensor):
    """Optimal eps predictor for independent pixels with a known pmf over grid levels:
    E[x0 | x_t] by exact Bayes over the K values."""
    abar_all = torch.cumprod(1 - betas, 0)

    def model(x_t, t):
        abar = abar_all[t].to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        a, sig2 = abar.sqrt(), 1 - abar
        logits = torch.log(pmf) - (x_t.unsqueeze(-1) - a.unsqueeze(-1) * levels) ** 2 / (2 * sig2.unsqueeze(-1))
        ex0 = (torch.softmax(logits, -1) * levels).sum(-1)
        return (x_t - a * ex0) / sig2.sqrt()

    return model


def expected_gaussian_bound(betas: np.ndarray, m: float, s: float, var_type: str) -> float:
    """E[bound] in nats/dim for x0 ~ N(m, s^2) under the optimal mean predictor, in closed
    form: each term is 0.5 (log(sp2/sq2) - 1 + sq2/sp2 + c1^2 Var(x0 | x_t) / sp2)."""
    abar = np.cumprod(1 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    beta_tilde = betas * (1 - abar_prev) / (1 - abar)
    c1 = betas * np.sqrt(abar_prev) / (1 - abar)
    post_var_x0 = s**2 * (1 - abar) / (abar * s**2 + 1 - abar)  # Var(x0 | x_t), Gaussian conditioning
    model_var = beta_tilde.copy() if var_type == "fixed_small" else betas.copy()
    model_var[0] = beta_tilde[1]
    sq2, sp2 = beta_tilde[1:], model_var[1:]
    kl = 0.5 * (np.log(sp2 / sq2) - 1 + sq2 / sp2 + c1[1:] ** 2 * post_var_x0[1:] / sp2)
    decoder = 0.5 * np.log(2 * np.pi * model_var[0]) + 0.5 * post_var_x0[0] / model_var[0]
    prior = 0.5 * (-1 - np.log(1 - abar[-1]) + (1 - abar[-1]) + abar[-1] * (m**2 + s**2))
    return float(prior + decoder + kl.sum())


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_gaussian_oracle_bound_equals_closed_form(mean_type, var_type):
    T, B, D = 1000, 400, 8
    m, s = 0.3, 0.5
    betas = get_beta_schedule("linear", T)
    d = GaussianDiffusion(betas, mean_type=mean_type, var_type=var_type)
    g = torch.Generator().manual_seed(11)
    x0 = m + s * torch.randn(B, D, generator=g, dtype=F64)
    out = d.nll(gaussian_oracle(betas, m, s, mean_type), x0, generator=g, max_batch=4000)
    total = out["total"]
    se = total.std().item() / math.sqrt(B)
    expected = expected_gaussian_bound(betas.numpy(), m, s, var_type)
    assert abs(total.mean().item() - expected) < 4 * se
    # Cross-entropy >= entropy. With fixed reverse variances the bound on continuous data
    # stays well above it (the first steps' variance mismatch), as the closed form shows.
    entropy = 0.5 * math.log(2 * math.pi * math.e * s**2)
    assert expected > entropy and total.mean().item() > entropy
    torch.testing.assert_close(out["prior"] + out["terms"].sum(1), out["total"])
    torch.testing.assert_close(out["decoder"], out["terms"][:, 0])
    # The optimal predictor for another distribution, N(-0.3, 0.25^2), is a wrong model.
    wrong = d.nll(gaussian_oracle(betas, -m, s / 2, mean_type), x0, generator=g, max_batch=4000)
    assert wrong["total"].mean().item() > total.mean().item() + 0.1


def test_discrete_oracle_bpd_approaches_the_true_entropy():
    """Independent pixels with a known pmf on K = 17 levels: with the exact Bayes denoiser the
    bound is >= the entropy, and the gap (the Gaussian reverse steps' discretisation error)
    shrinks towards 0 as T grows with the betas scaled as 1/T."""
    B, D, K = 100, 16, 17
    levels = 2 * torch.arange(K, dtype=F64) / (K - 1) - 1
    pmf = torch.exp(-((levels - 0.2) ** 2) / (2 * 0.4**2))
    pmf = pmf / pmf.sum()
    g = torch.Generator().manual_seed(12)
    x0 = levels[torch.multinomial(pmf, B * D, replacement=True, generator=g).reshape(B, D)]
    entropy_bits = -(pmf * torch.log2(pmf)).sum().item()
    gaps = []
    for T in (1000, 4000):
        betas = get_beta_schedule("linear", T, beta_start=0.1 / T, beta_end=20 / T)
        d = GaussianDiffusion(betas)
        out = d.bpd(discrete_oracle(betas, levels, pmf), x0, num_levels=K, generator=g, max_batch=20000)
        total = out["total"]
        se = total.std().item() / math.sqrt(B)
        assert total.mean().item() >= entropy_bits - 3 * se
        torch.testing.assert_close(out["prior"] + out["terms"].sum(1), total)
        assert torch.isfinite(out["terms"]).all()
        gaps.append(total.mean().item() - entropy_bits)
    # The gap is the Gaussian reverse steps' error, which shrinks as the steps get finer.
    assert gaps[1] < 0.1 and gaps[1] < gaps[0] / 2
    # The exact denoiser for uniform pixels is a wrong model: it pays about KL(p || uniform).
    uniform = torch.full_like(pmf, 1.0 / K)
    wrong = d.bpd(discrete_oracle(betas, levels, uniform), x0, num_levels=K, generator=g, max_batch=20000)
    assert wrong["total"].mean().item() > total.mean().item() + 0.1


def test_bound_does_not_depend_on_timestep_batching():
    T = 60
    betas = get_beta_schedule("cosine", T)
    d = GaussianDiffusion(betas)
    model = gaussian_oracle(betas, 0.0, 0.5, "eps", scale=0.95)
    x0 = torch.linspace(-1, 1, 17, dtype=F64).repeat(5, 1)
    a = d.bpd(model, x0, num_levels=17, generator=generators(0, "bound", range(5)), max_batch=5)
    b = d.bpd(model, x0, num_levels=17, generator=generators(0, "bound", range(5)), max_batch=300)
    torch.testing.assert_close(a["terms"], b["terms"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("block_values", [17 * 7, 17 * 64])
def test_bound_noise_blocks_depend_neither_on_batching_nor_on_the_batch(monkeypatch, block_values):
    """With blocks of 7 timesteps (cut across by every max_batch below) and of 64 (more than T),
    the bound is the same whatever the timesteps per call and whichever examples share the
    batch: each example's noise comes from its own generator, block by block."""
    monkeypatch.setattr("ddpm.diffusion.BOUND_NOISE_BLOCK_VALUES", block_values)
    T = 60
    betas = get_beta_schedule("cosine", T)
    d = GaussianDiffusion(betas)
    model = gaussian_oracle(betas, 0.0, 0.5, "eps", scale=0.95)
    x0 = torch.linspace(-1, 1, 17, dtype=F64).repeat(5, 1) * torch.linspace(0.2, 1, 5, dtype=F64)[:, None]
    runs = [d.bpd(model, x0, num_levels=17, generator=generators(0, "bound", range(5)), max_batch=m)["terms"]
            for m in (5, 15, 300)]
    split = torch.cat([d.bpd(model, x0[:2], num_levels=17, generator=generators(0, "bound", range(2)),
                             max_batch=6)["terms"],
                       d.bpd(model, x0[2:], num_levels=17, generator=generators(0, "bound", range(2, 5)),
                             max_batch=9)["terms"]])
    for other in (*runs[1:], split):
        torch.testing.assert_close(other, runs[0], rtol=1e-12, atol=1e-12)
    other_seed = d.bpd(model, x0, num_levels=17, generator=generators(1, "bound", range(5)), max_batch=15)
    assert not torch.allclose(other_seed["terms"][:, 1:], runs[0][:, 1:])


def test_prior_term_closed_form():
    d = make(1000)
    x0 = torch.tensor([[0.5, -1.0]], dtype=F64)
    abar = torch.cumprod(1 - d.betas, 0)[-1].item()
    # KL(N(sqrt(abar) x0, 1 - abar) || N(0, 1)) per dimension.
    ref = np.mean([0.5 * (-1 - math.log(1 - abar) + (1 - abar) + abar * v**2) for v in (0.5, -1.0)])
    assert d.prior_kl(x0).item() == pytest.approx(ref, rel=1e-10)


# ---------------------------------------------------------------- losses
@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_simple_loss_is_zero_for_the_true_target_and_l1_option(mean_type):
    d = make(100, mean_type=mean_type)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(16, 2, generator=g) * 2 - 1
    noise = torch.randn(16, 2, generator=g)
    t = torch.randint(0, 100, (16,), generator=g)
    truth = lambda x_t, tt: d.training_target(x0, tt, noise)
    assert d.training_losses(truth, x0, t=t, noise=noise)["loss"].abs().max() < 1e-6
    off = lambda x_t, tt: d.training_target(x0, tt, noise) + 0.5
    l2 = d.training_losses(off, x0, t=t, noise=noise)["loss"]
    torch.testing.assert_close(l2, torch.full((16,), 0.25))
    l1 = make(100, mean_type=mean_type, loss_norm="l1").training_losses(off, x0, t=t, noise=noise)["loss"]
    torch.testing.assert_close(l1, torch.full((16,), 0.5))


def test_hybrid_vlb_part_does_not_train_the_mean():
    d = make(100, var_type="learned_range", loss_type="hybrid")
    x0 = torch.rand(8, 3) * 2 - 1
    t = torch.arange(8) * 12
    noise = torch.randn(8, 3)
    head = torch.zeros(8, 6, requires_grad=True)
    losses = d.training_losses(lambda x, tt: head + 0.0, x0, t=t, noise=noise, num_levels=17)
    assert set(losses) == {"loss", "mse", "vb"}
    grad_vb, = torch.autograd.grad(losses["vb"].sum(), head)
    assert grad_vb[:, :3].abs().max() == 0  # mean part frozen (Nichol & Dhariwal Sec. 3.1)
    assert grad_vb[:, 3:].abs().max() > 0   # variance part trained
    full = GaussianDiffusion(d.betas, var_type="learned_range", loss_type="vlb")
    full_loss = full.training_losses(lambda x, tt: head + 0.0, x0, t=t, noise=noise)["loss"]
    grad_full, = torch.autograd.grad(full_loss.sum(), head)
    assert grad_full[:, :3].abs().max() > 0


def test_vlb_loss_term_equals_bound_term():
    """T * (sampled term) from training_losses equals the bound's term at that t."""
    T = 40
    betas = get_beta_schedule("linear", T)
    d = GaussianDiffusion(betas, loss_type="vlb")
    model = gaussian_oracle(betas, 0.0, 0.5, "eps", scale=0.9)
    x0 = (2 * torch.randint(0, 17, (1, 6)) / 16 - 1).to(F64)
    bound = d.bpd(model, x0, num_levels=17, clip_denoised=False, generator=generators(1, "bound", [0]), max_batch=1)
    # The bound's x_t noise: the example's generator drawn in blocks of timesteps.
    block = BOUND_NOISE_BLOCK_VALUES // 6
    noises = StepNoise((1, 6), generators(1, "bound", [0]), "cpu", F64, block).take(0, T)
    for t in range(T):
        noise = noises[t]
        vb = d.training_losses(model, x0, t=torch.tensor([t]), noise=noise, num_levels=17)["vb"]
        assert vb.item() / T == pytest.approx(bound["terms"][0, t].item(), rel=1e-9)


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, fragment", [
    ({"mean_type": "epsilon"}, "mean_type='epsilon'"),
    ({"var_type": "learned"}, "var_type='learned'"),
    ({"loss_type": "mse"}, "loss_type='mse'"),
    ({"loss_norm": "l3"}, "loss_norm='l3'"),
    ({"var_type": "learned_range"}, "needs loss_type 'hybrid' or 'vlb'"),
    ({"loss_type": "hybrid"}, "loss_type='hybrid' needs var_type 'learned_range', got var_type='fixed_small'"),
    ({"loss_type": "hybrid", "var_type": "fixed_large"}, "got var_type='fixed_large'"),
])
def test_bad_choices_are_named(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        GaussianDiffusion(get_beta_schedule("linear", 10), **kwargs)
    assert fragment in str(err.value)
    assert "accepted" in str(err.value) or "needs" in str(err.value)


def test_bad_betas_are_rejected():
    with pytest.raises(ValueError, match="every beta must lie in"):
        GaussianDiffusion(torch.tensor([0.1, 0.0, 0.2]))
    with pytest.raises(ValueError, match="only the last beta"):
        GaussianDiffusion(torch.tensor([0.1, 1.0, 0.2]), mean_type="x0")
    with pytest.raises(ValueError, match="jsd"):
        GaussianDiffusion(get_beta_schedule("jsd", 10), mean_type="eps")


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_every_schedule_gives_a_finite_bound(schedule):
    T = 50
    mean_type = "v" if schedule == "jsd" else "eps"
    betas = get_beta_schedule(schedule, T)
    d = GaussianDiffusion(betas, mean_type=mean_type)
    x0 = (2 * torch.randint(0, 17, (4, 5)) / 16 - 1).to(F64)
    out = d.bpd(gaussian_oracle(betas, 0.0, 0.5, mean_type), x0, num_levels=17,
                generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v).all() for v in out.values())


# ---------------------------------------------------------------- structure
CORE = ["streams", "seeding", "errors", "progress", "schedules", "likelihood", "diffusion", "batches",
        "sampling.contract", "sampling.respacing", "sampling.ddim", "sampling.runner", "evaluation.bound"]


@pytest.mark.parametrize("module", CORE)
def test_core_modules_import_one_way(module):
    """schedules -> likelihood -> diffusion -> the seeded batch loop -> the samplers' contract ->
    respacing -> DDIM -> the sampling runner -> the bound (streams -> seeding, which makes torch
    generators from the streams' seeds, and errors are the leaves): a module
    imports, anywhere in its body, only ddpm modules before it in CORE (the bound also reads
    ddpm.data), so no two core modules import each other."""
    import ast
    from pathlib import Path

    import ddpm

    path = Path(ddpm.__file__).parent / f"{module.replace('.', '/')}.py"
    tree = ast.parse(path.read_text())
    imported = {n.module.removeprefix("ddpm.") for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("ddpm.")}
    imported |= {a.name.removeprefix("ddpm.") for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names if a.name.startswith("ddpm.")}
    imported = {name.split(".")[0] if name.split(".")[0] == "data" else name for name in imported}
    allowed = set(CORE[:CORE.index(module)])
    if module == "evaluation.bound":
        allowed.add("data")
    assert imported <= allowed, f"ddpm.{module} imports {sorted(imported - allowed)}"


_TOY_ABAR = GaussianDiffusion(get_beta_schedule("linear", 10, beta_start=0.05, beta_end=0.5)).alphas_cumprod


def _toy_eps_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """0.8 times the exact eps-predictor of N(0, I) data (E[eps | x_t] = sqrt(1 - abar_t) x_t):
    imperfect, so every term depends on t and on the noise, with moderate variance."""
    return 0.8 * (1 - _TOY_ABAR.to(x_t.device)[t]).sqrt()[:, None].to(x_t.dtype) * x_t


def test_stratified_bound_estimate_is_unbiased_for_the_full_bound():
    """E[L_T + sum_k n_k L_{t_k}] = L_T + sum_t E[L_t]: the mean of many estimates matches the
    mean of many full bounds on the same points within 4 combined standard errors."""
    d = GaussianDiffusion(get_beta_schedule("linear", 10, beta_start=0.05, beta_end=0.5))
    points = torch.tensor([[0.5, -1.0], [1.5, 0.2], [-0.7, 0.9]], dtype=torch.float64)
    reps = 20_000
    x0 = points.repeat(reps, 1)
    full = d.variational_bound(_toy_eps_model, x0, None, clip_denoised=False,
                               generator=torch.Generator().manual_seed(0), max_batch=len(x0))["total"]
    est = d.bound_estimate(_toy_eps_model, x0, None, strata=3, clip_denoised=False,
                           generator=torch.Generator().manual_seed(1))["total"]
    for i in range(len(points)):
        a, b = full[i::len(points)], est[i::len(points)]
        se = math.sqrt(a.var().item() / reps + b.var().item() / reps)
        assert abs(a.mean().item() - b.mean().item()) < 4 * se, (i, a.mean().item(), b.mean().item(), se)
    # The estimate is noisier than the full bound, but it is the same quantity.
    assert est.var() > full.var()


def test_stratified_bound_draws_one_timestep_in_each_block():
    d = GaussianDiffusion(get_beta_schedule("linear", 10))
    x0 = torch.zeros(64, 2)
    t = d.bound_estimate(_toy_eps_model, x0, None, strata=3, generator=torch.Generator().manual_seed(0))["timesteps"]
    blocks = [(0, 1), (1, 3), (3, 10)]  # L_0 alone, then geometric: round(10 ** (1 / 2)) = 3
    for k, (low, high) in enumerate(blocks):
        assert low <= int(t[:, k].min()) and int(t[:, k].max()) < high
        assert set(t[:, k].tolist()) == set(range(low, high))  # 64 draws reach every step of the block
    every = d.bound_estimate(_toy_eps_model, x0[:2], None, strata=10)["timesteps"]
    assert every.tolist() == [list(range(10))] * 2


@pytest.mark.parametrize("T, strata", [(1000, 10), (1000, 2), (1000, 999), (1000, 1000), (7, 1), (4000, 10)])
def test_bound_strata_are_contiguous_blocks_growing_from_the_decoder_alone(T, strata):
    edges = bound_strata_edges(T, strata).tolist()
    sizes = [b - a for a, b in zip(edges, edges[1:], strict=False)]
    assert edges[0] == 0 and edges[-1] == T and len(sizes) == strata and min(sizes) >= 1
    if strata > 1:
        assert sizes[0] == 1  # L_0 is its own block
    if (T, strata) == (1000, 10):
        # e_k = round(1000 ** ((k - 1) / 9)) for k = 1..10
        assert edges == [0, 1, 2, 5, 10, 22, 46, 100, 215, 464, 1000]


@pytest.mark.parametrize("strata", [0, 11])
def test_stratified_bound_refuses_strata_outside_the_timesteps(strata):
    d = GaussianDiffusion(get_beta_schedule("linear", 10))
    with pytest.raises(ValueError, match=f"strata={strata} must lie in 1..10"):
        d.bound_estimate(_toy_eps_model, torch.zeros(2, 2), None, strata=strata)
