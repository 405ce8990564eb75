"""Tests for ddpm.score.sde: the VP, sub-VP and VE SDEs against their closed forms (written here in
NumPy from Song et al. 2021), a Monte Carlo forward process and the probability-flow ODE; the
SDE of a discrete diffusion; the score adapters; continuous-time denoising score matching; and
float timesteps in the table-based networks."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from ddpm.config import Params
from ddpm.diffusion import GaussianDiffusion
from ddpm.nn import MLP, RBFMLP, ShuffleUNet
from ddpm.pipeline.build import load_trained
from ddpm.pipeline.checkpoint import save_checkpoint
from ddpm.schedules import MAX_BETA, SCHEDULES, get_beta_schedule
from ddpm.score.sde import (
    SDE,
    VESDE,
    VPSDE,
    DenoisingScoreMatching,
    DiscreteVPSDE,
    SubVPSDE,
    score_from_diffusion,
    score_from_eps_model,
    sde_from_diffusion,
)
from ddpm.training.loop import resolved_params, train

F64_EPS = np.finfo(np.float64).eps


# One torch thread and a forked RNG for every test here (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- closed forms
# Song et al. 2021, eqs. 9, 11, 14 and their kernels (score_sde's sde_lib), written independently
# of ddpm.score.sde: name -> (f(t), g(t), mean coefficient a(t), std(t)) for float64 arrays t
# (expm1 for 1 - exp(-x), which loses digits to cancellation at small t).
B0, B1 = 0.1, 20.0
SMIN, SMAX = 0.01, 50.0


def _int_beta(t: np.ndarray) -> np.ndarray:
    return B0 * t + 0.5 * (B1 - B0) * t**2


REFERENCE: dict[str, Callable[[np.ndarray], tuple[np.ndarray, ...]]] = {
    "vp": lambda t: (-0.5 * (B0 + t * (B1 - B0)), np.sqrt(B0 + t * (B1 - B0)),
                     np.exp(-0.5 * _int_beta(t)), np.sqrt(-np.expm1(-_int_beta(t)))),
    "subvp": lambda t: (-0.5 * (B0 + t * (B1 - B0)),
                        np.sqrt((B0 + t * (B1 - B0)) * -np.expm1(-2 * _int_beta(t))),
                        np.exp(-0.5 * _int_beta(t)), -np.expm1(-_int_beta(t))),
    "ve": lambda t: (0 * t, SMIN * (SMAX / SMIN) ** t * np.sqrt(2 * np.log(SMAX / SMIN)),
                     np.ones_like(t), SMIN * (SMAX / SMIN) ** t),
}
MAKE: dict[str, Callable[[], SDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def test_defaults_are_score_sde_settings() -> None:
    vp, subvp, ve = VPSDE(), SubVPSDE(), VESDE()
    assert (vp.beta_min, vp.beta_max, vp.N, vp.sampling_eps) == (0.1, 20.0, 1000, 1e-3)
    assert (subvp.beta_min, subvp.beta_max, subvp.N, subvp.sampling_eps) == (0.1, 20.0, 1000, 1e-3)
    assert (ve.sigma_min, ve.sigma_max, ve.N, ve.sampling_eps) == (0.01, 50.0, 1000, 1e-5)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_coefficients_equal_closed_forms(name: str) -> None:
    sde = MAKE[name]()
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    x = torch.ones(101, 2, dtype=torch.float64)
    drift, g = sde.sde(x, t)
    mean, std = sde.marginal_prob(x, t)
    f_ref, g_ref, a_ref, std_ref = REFERENCE[name](t.numpy())
    # A few float64 roundings of quantities of order one (exp, sqrt, expm1 vs 1 - exp).
    for got, want in ((drift[:, 0], f_ref), (g, g_ref), (mean[:, 1], a_ref), (std, std_ref)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-15)
    assert g.dtype == std.dtype == torch.float64
    # Float32 inputs get float32 coefficients (computed in float64, cast at the end).
    drift32, g32 = sde.sde(x.float(), t.float())
    assert drift32.dtype == g32.dtype == torch.float32


def test_vp_discrete_betas_are_the_linear_schedule() -> None:
    vp = VPSDE(0.1, 20.0, 1000)
    linear = get_beta_schedule("linear", 1000)  # 1e-4 .. 0.02
    assert vp.discrete_betas.dtype == torch.float64
    np.testing.assert_allclose(vp.discrete_betas.numpy(), linear.numpy(), rtol=2 * F64_EPS, atol=0)
    np.testing.assert_allclose(vp.alphas_cumprod.numpy(), np.cumprod(1 - linear.numpy()), rtol=1e-13)


def test_vp_mean_coefficient_is_exp_of_integrated_beta() -> None:
    vp = VPSDE()
    for t in (0.013, 0.5, 0.77, 1.0):
        # Gauss-Kronrod is exact for a linear integrand.
        integral, _ = integrate.quad(lambda s: B0 + s * (B1 - B0), 0, t)
        assert vp.mean_coef(t).item() ** 2 == pytest.approx(math.exp(-integral), rel=1e-12)


def test_vp_continuous_alphas_cumprod_is_near_the_discrete_product() -> None:
    """log prod_{j<=i}(1 - beta_j) vs log abar((i + 1)/N) = -int_0^{(i+1)/N} beta: they differ by
    sum_j (-log(1 - beta_j) - beta_j) in [0, sum beta_j^2 / (2 (1 - beta_j))] plus the Riemann
    error sum_j beta_j - int beta = (b1 - b0)(i + 1)(i + 1 - N) / (2 N^2 (N - 1)), at most
    (b1 - b0) / (8 (N - 1)) in size."""
    vp = VPSDE()
    N = vp.N
    betas = vp.discrete_betas.numpy()
    discrete = np.cumsum(np.log1p(-betas))
    t = np.arange(1, N + 1) / N
    continuous = 2 * vp.log_mean_coef(torch.from_numpy(t)).numpy()
    bound = np.sum(betas**2 / (2 * (1 - betas))) + (B1 - B0) / (8 * (N - 1))
    assert np.max(np.abs(discrete - continuous)) <= bound
    assert bound < 0.08  # so the test has teeth: abar is matched to within 8% everywhere


def test_ve_discrete_sigmas_are_a_geometric_ladder() -> None:
    ve = VESDE(0.01, 50.0, 1000)
    sigmas = ve.discrete_sigmas.numpy()
    assert ve.discrete_sigmas.dtype == torch.float64
    np.testing.assert_allclose(sigmas[[0, -1]], [0.01, 50.0], rtol=1e-13)
    ratios = sigmas[1:] / sigmas[:-1]
    np.testing.assert_allclose(ratios, (50.0 / 0.01) ** (1 / 999), rtol=1e-12)
    assert np.all(ratios > 1)


def test_discretizations_are_ddpm_ncsn_and_euler_maruyama() -> None:
    """At t_i = i / (N - 1) (step index i): VP is DDPM's step with beta_i, VE is NCSN's chain
    (the G^2 add up to sigma_i^2), sub-VP is one Euler-Maruyama step of size 1/N."""
    N = 6
    t = torch.arange(N, dtype=torch.float64) / (N - 1)
    x = torch.full((N, 2), 3.0, dtype=torch.float64)
    vp = VPSDE(0.1, 4.0, N)
    betas = np.linspace(0.1 / N, 4.0 / N, N)
    f, G = vp.discretize(x, t)
    np.testing.assert_allclose(f[:, 0].numpy(), 3 * (np.sqrt(1 - betas) - 1), rtol=1e-14)
    np.testing.assert_allclose(G.numpy(), np.sqrt(betas), rtol=1e-15)
    ve = VESDE(0.01, 50.0, N)
    f, G = ve.discretize(x, t)
    assert torch.equal(f, torch.zeros_like(x))
    np.testing.assert_allclose(np.cumsum(G.numpy() ** 2), np.geomspace(0.01, 50.0, N) ** 2, rtol=1e-13)
    subvp = SubVPSDE(0.1, 20.0, N)
    f, G = subvp.discretize(x, t)
    f_ref, g_ref, _, _ = REFERENCE["subvp"](t.numpy())
    np.testing.assert_allclose(f[:, 0].numpy(), 3 * f_ref / N, rtol=1e-14)
    np.testing.assert_allclose(G.numpy(), g_ref / np.sqrt(N), rtol=1e-14)


@pytest.mark.parametrize(("make", "key"), [
    (lambda: VPSDE(beta_min=0.0), "beta_min=0.0"),
    (lambda: VPSDE(beta_max=0.05), "beta_max=0.05"),
    (lambda: VPSDE(N=0), "N=0"),
    (lambda: VPSDE(N=10), "N=10"),           # beta_max / N = 2 is no beta
    (lambda: SubVPSDE(beta_min=-1.0), "beta_min=-1.0"),
    (lambda: SubVPSDE(N=2.5), "N=2.5"),
    (lambda: VESDE(sigma_min=0.0), "sigma_min=0.0"),
    (lambda: VESDE(sigma_max=0.001), "sigma_max=0.001"),
])
def test_bad_arguments_are_refused_by_name(make: Callable[[], SDE], key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make()


# --------------------------------------------------------------------------- forward process
def _euler_maruyama_moments(name: str, steps: int, var0: float, t_stop: float) -> tuple[float, float]:
    """The exact mean factor and variance (for x0 = 0 + var0) of the Euler-Maruyama chain with
    ``steps`` steps on [0, 1] stopped at ``t_stop``, from the closed-form f and g: the expected
    values that the simulation estimates."""
    dt = 1.0 / steps
    t = np.arange(round(t_stop * steps)) * dt
    f, g, _, _ = REFERENCE[name](t)
    factor, var = 1.0, var0
    for fk, gk in zip(f, g, strict=True):
        factor *= 1 + fk * dt
        var = (1 + fk * dt) ** 2 * var + gk**2 * dt
    return factor, var


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_marginals_match_a_monte_carlo_forward_process(name: str) -> None:
    """Simulate dx = f x dt + g dw by Euler-Maruyama (K = 500 steps, M paths per dimension)
    from fixed x0 (VE: from N(x0, sigma_min^2), its kernel's start) and compare the sample mean
    and std at t = 1/4, 1/2, 1 with marginal_prob. Tolerance: 5 standard errors (sd / sqrt(M)
    for the mean, sd / sqrt(2 (M - 1)) for the std of Gaussian samples) plus a bound on the
    scheme's first-order bias, 2 |m_K - m_2K| (Richardson) doubled for safety, from the exact
    moments of the chain."""
    sde = MAKE[name]()
    K, M = 500, 20000
    x0 = torch.tensor([-1.5, 2.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(11)
    x = x0.repeat(M, 1)
    var0 = SMIN**2 if name == "ve" else 0.0
    x = x + math.sqrt(var0) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    stops = {K // 4: 0.25, K // 2: 0.5, K: 1.0}
    for k in range(K):
        t = torch.tensor(k / K, dtype=torch.float64)
        drift, g = sde.sde(x, t)
        x = x + drift / K + g[:, None] * math.sqrt(1 / K) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        if k + 1 not in stops:
            continue
        t_stop = stops[k + 1]
        mean, std = sde.marginal_prob(x0[None], torch.tensor([t_stop], dtype=torch.float64))
        (fac_k, var_k), (fac_2k, var_2k) = (_euler_maruyama_moments(name, n, var0, t_stop) for n in (K, 2 * K))
        sd = std.item()
        mean_tol = 5 * sd / math.sqrt(M) + 4 * abs(fac_k - fac_2k) * x0.abs()
        std_tol = 5 * sd / math.sqrt(2 * (M - 1)) + 4 * abs(math.sqrt(var_k) - math.sqrt(var_2k))
        assert torch.all((x.mean(0) - mean[0]).abs() <= mean_tol), (t_stop, x.mean(0), mean)
        assert torch.all((x.std(0) - sd).abs() <= std_tol), (t_stop, x.std(0), sd)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_prior_logp_is_the_gaussian_log_density(name: str) -> None:
    sde = MAKE[name]()
    z = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    want = stats.norm.logpdf(z.numpy(), scale=sde.prior_std).reshape(5, -1).sum(1)
    np.testing.assert_allclose(sde.prior_logp(z).numpy(), want, rtol=1e-13)
    assert sde.prior_std == (SMAX if name == "ve" else 1.0)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_prior_sampling_is_per_example(name: str) -> None:
    sde = MAKE[name]()

    def gens(seeds: list[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in seeds]

    batch = sde.prior_sampling((3, 2, 4), gens([5, 6, 7]))
    alone = sde.prior_sampling((1, 2, 4), gens([6]))
    assert torch.equal(batch[1:2], alone)
    plain = torch.randn(2, 4, generator=torch.Generator().manual_seed(6))
    assert torch.equal(alone[0], plain * sde.prior_std)
    big = sde.prior_sampling((20000,), torch.Generator().manual_seed(1), dtype=torch.float64)
    # The std of 20000 normal draws has a standard error of std / sqrt(2 * 19999).
    assert abs(big.std().item() / sde.prior_std - 1) < 5 / math.sqrt(2 * 19999)


# --------------------------------------------------------------------------- probability flow
def _flow_check(sde: SDE, a_std: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], knots: np.ndarray
                ) -> None:
    """Data N(m, s^2 I): the marginal is N(a m, (a^2 s^2 + std^2) I) and its exact score is
    -(x - a m) / (a^2 s^2 + std^2). The probability-flow drift is affine in x, so it carries the
    mean mu and a deviation sigma as d mu/dt = v(mu), d sigma/dt = v(mu + sigma) - v(mu). Solved
    with scipy's RK45 at rtol 1e-9 from knot to knot (the drift may jump at a knot, which
    step-size control handles badly), the transported (mu, sigma) must equal the marginal's
    mean and std at every knot to 1e-6 of their scale (order one), room for the solver's
    global error (local errors of 1e-9 over a few hundred steps)."""
    m, s = 0.7, 0.4

    def moments(t: float) -> tuple[float, float]:
        a, std = (float(v) for v in a_std(np.array(t)))
        return a * m, math.sqrt(a * a * s * s + std * std)

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, std = a_std(t.numpy())
        a, var = torch.from_numpy(a)[:, None], torch.from_numpy(a * a * s * s + std * std)[:, None]
        return -(x - a * m) / var

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        x = torch.tensor([[y[0]], [y[0] + y[1]]], dtype=torch.float64)
        v = sde.ode_drift(x, torch.full((2,), t, dtype=torch.float64), score)[:, 0].numpy()
        return np.array([v[0], v[1] - v[0]])

    y = np.array(moments(knots[0]))
    for t0, t1 in zip(knots[:-1], knots[1:], strict=True):
        y = integrate.solve_ivp(rhs, (t0, t1), y, rtol=1e-9, atol=1e-11).y[:, -1]
        np.testing.assert_allclose(y, moments(t1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_probability_flow_transports_gaussian_marginals(name: str) -> None:
    _flow_check(MAKE[name](), lambda t: REFERENCE[name](t)[2:], np.linspace(0, 1, 5))


def test_probability_flow_of_a_discrete_diffusion_transports_its_marginals() -> None:
    diffusion = GaussianDiffusion(get_beta_schedule("cosine", 8))
    knots = np.concatenate([[0.0], np.log(diffusion.alphas_cumprod.numpy())])

    def a_std(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        log_abar = np.interp(t, np.arange(9) / 8, knots)
        return np.exp(0.5 * log_abar), np.sqrt(-np.expm1(log_abar))

    _flow_check(sde_from_diffusion(diffusion), a_std, np.arange(9) / 8)


# --------------------------------------------------------------------------- SDE of a diffusion
@pytest.mark.parametrize("T", [7, 1000])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_discrete_sde_marginals_at_the_knots_are_the_diffusions(schedule: str, T: int) -> None:
    """At t = (i + 1)/T: mean coefficient^2 = alphas_cumprod[i] and std^2 = 1 - alphas_cumprod[i]
    (a cumulative sum of T logs: relative error a few T ulp, 1e-12 covers T = 1000); beta(t) is
    -T log(1 - beta_i) inside interval i, log abar is linear between knots, and ``discretize`` is
    DDPM's step with the diffusion's betas."""
    betas = get_beta_schedule(schedule, T)
    mean_type = "x0" if schedule == "jsd" else "eps"     # the jsd's abar_T = 0 refuses eps
    diffusion = GaussianDiffusion(betas, mean_type=mean_type)
    sde = sde_from_diffusion(diffusion)
    assert isinstance(sde, DiscreteVPSDE) and isinstance(sde, VPSDE) and sde.N == T
    assert sde.sampling_eps == 1 / T
    abar = diffusion.alphas_cumprod.numpy().copy()
    capped = betas.numpy() > MAX_BETA                     # only the jsd's last beta (= 1)
    assert capped.sum() == (1 if schedule == "jsd" else 0)
    if schedule == "jsd":
        abar[-1] = abar[-2] * (1 - MAX_BETA)
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    x = torch.ones(T, 1, dtype=torch.float64)
    mean, std = sde.marginal_prob(x, t)
    np.testing.assert_allclose(mean[:, 0].numpy() ** 2, abar, rtol=1e-12)
    np.testing.assert_allclose(std.numpy() ** 2, 1 - abar, rtol=1e-10)
    mid = (torch.arange(T, dtype=torch.float64) + 0.5) / T
    rates = -T * np.log1p(-np.minimum(betas.numpy(), MAX_BETA))
    np.testing.assert_allclose(sde.beta(mid).numpy(), rates, rtol=1e-13)
    log_knots = np.concatenate([[0.0], np.log(abar)])
    np.testing.assert_allclose(2 * sde.log_mean_coef(mid).numpy(), (log_knots[:-1] + log_knots[1:]) / 2,
                               rtol=1e-11, atol=1e-13)
    f, G = sde.discretize(x, t)
    keep = ~capped
    b = betas.numpy()[keep]
    np.testing.assert_allclose(f[keep, 0].numpy(), -b / (1 + np.sqrt(1 - b)), rtol=1e-14)
    np.testing.assert_allclose(G[keep].numpy(), np.sqrt(betas.numpy()[keep]), rtol=1e-15)
    grid = torch.linspace(0, 1, 4 * T + 1, dtype=torch.float64)
    for value in (*sde.sde(torch.ones(4 * T + 1, 1, dtype=torch.float64), grid), sde.marginal_std(grid)):
        assert torch.isfinite(value).all()


def test_discrete_sde_of_the_linear_schedule_is_close_to_vpsde() -> None:
    """Both log abar(t) are within the discrete-product bound of
    test_vp_continuous_alphas_cumprod_is_near_the_discrete_product at the knots; between knots
    the discrete one is the chord of VP's concave quadratic -1/2 (b1 - b0) t^2 - b0 t, which
    lies below it by at most (b1 - b0) / (8 N^2)."""
    N = 1000
    discrete = sde_from_diffusion(GaussianDiffusion(get_beta_schedule("linear", N)))
    vp = VPSDE(B0, B1, N)
    t = torch.linspace(0, 1, 20 * N + 1, dtype=torch.float64)
    gap = 2 * (discrete.log_mean_coef(t) - vp.log_mean_coef(t)).abs().max().item()
    betas = vp.discrete_betas.numpy()
    bound = np.sum(betas**2 / (2 * (1 - betas))) + (B1 - B0) / (8 * (N - 1)) + (B1 - B0) / (8 * N**2)
    assert gap <= bound


# --------------------------------------------------------------------------- score adapters
M_DATA, S_DATA = 0.3, 0.6


Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _gaussian_oracle(diffusion: GaussianDiffusion, learned: bool) -> Network:
    """The exact minimiser of the discrete diffusion's simple loss for data N(M, S^2 I), for its
    mean_type: E[eps | x_t], E[x0 | x_t] or E[v | x_t] at the code timestep (which must be an
    integer: the adapter has to feed t T - 1 at the knots). With ``learned``, a second half of
    channels that the adapter must ignore."""
    abar_table = diffusion.alphas_cumprod

    def model(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        assert tau.is_floating_point()
        index = tau.round()
        assert torch.allclose(tau, index, rtol=0, atol=1e-9), tau
        abar = abar_table[index.long()][:, None]
        var = abar * S_DATA**2 + 1 - abar
        resid = x - abar.sqrt() * M_DATA
        eps = (1 - abar).sqrt() * resid / var
        x0 = M_DATA + abar.sqrt() * S_DATA**2 * resid / var
        out = {"eps": eps, "x0": x0, "v": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[diffusion.mean_type]
        return torch.cat([out, torch.full_like(out, 1e3)], 1) if learned else out

    return model


@pytest.mark.parametrize(("schedule", "T", "mean_type", "var_type"), [
    ("linear", 1000, "eps", "fixed_small"),
    ("linear", 1000, "x0", "fixed_small"),
    ("cosine", 30, "v", "fixed_large"),
    ("cosine", 30, "eps", "learned_range"),
    ("jsd", 30, "x0", "fixed_small"),
    ("jsd", 30, "v", "learned_range"),
])
def test_score_from_diffusion_is_the_exact_score_at_the_knots(schedule: str, T: int, mean_type: str,
                                                              var_type: str) -> None:
    """With the optimal network for Gaussian data, the adapter's score at t = (i + 1)/T is the
    marginal's score -(x - sqrt(abar_i) M) / (abar_i S^2 + 1 - abar_i), for every mean_type
    (the jsd's capped last knot aside)."""
    learned = var_type == "learned_range"
    diffusion = GaussianDiffusion(get_beta_schedule(schedule, T), mean_type=mean_type, var_type=var_type,
                                  loss_type="hybrid" if learned else "simple")
    score = score_from_diffusion(diffusion, _gaussian_oracle(diffusion, learned))
    steps = torch.tensor([0, 1, T // 3, T // 2, T - 2])
    x = torch.randn(len(steps), 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    t = (steps + 1).double() / T
    abar = diffusion.alphas_cumprod[steps][:, None]
    want = -(x - abar.sqrt() * M_DATA) / (abar * S_DATA**2 + 1 - abar)
    # Conversions through 1 / sqrt(1 - abar) with 1 - abar down to 1e-4: relative 1e-10.
    torch.testing.assert_close(score(x, t), want, rtol=1e-10, atol=1e-12)
    assert score.sde.N == T
    end = score(x, torch.ones(len(steps), dtype=torch.float64))
    assert torch.isfinite(end).all()


def test_score_from_diffusion_feeds_float_timesteps_and_returns_x_dtype() -> None:
    seen: list[torch.Tensor] = []

    def model(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        seen.append(tau)
        return torch.zeros_like(x)

    diffusion = GaussianDiffusion(get_beta_schedule("linear", 10))
    score = score_from_diffusion(diffusion, model)
    out = score(torch.ones(4, 2), torch.tensor([0.0, 0.05, 0.55, 1.0]))
    assert out.dtype == torch.float32
    assert seen[0].dtype == torch.float32
    # tau = t T - 1, clamped to [0, T - 1].
    torch.testing.assert_close(seen[0], torch.tensor([0.0, 0.0, 4.5, 9.0]))


def test_score_from_diffusion_refuses_a_wrongly_shaped_output() -> None:
    diffusion = GaussianDiffusion(get_beta_schedule("linear", 10), var_type="learned_range", loss_type="hybrid")
    score = score_from_diffusion(diffusion, lambda x, t: x)
    with pytest.raises(ValueError, match=r"learned_range.*\(4, 4\)"):
        score(torch.ones(4, 2), torch.full((4,), 0.5))


def test_score_from_diffusion_on_a_trained_digits_checkpoint(tmp_path: Path) -> None:
    """A checkpoint as the train stage writes it (a U-Net trained for a few steps on
    digits-shaped data, T = 1000), loaded by ``load_trained``: the score is finite everywhere on
    [eps, 1], and at the knots it is -eps_theta(x, i) / sqrt(1 - abar_i) with the network called
    on the LongTensor i, as in the discrete sampler."""
    cpu = torch.device("cpu")
    meta = {"dataset": "digits", "kind": "image", "shape": [1, 8, 8], "num_levels": 17}
    # A large lr and a fast EMA so that the zero-initialised output layer has moved: the knot
    # comparison below means nothing for a network that still outputs zeros.
    params = Params.from_dict({
        "dataset": "digits", "timesteps": 1000,
        "model": {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4],
                  "dropout": 0.0},
        "train": {"steps": 6, "batch_size": 16, "warmup_steps": 1, "lr": 1e-2, "ema_decay": 0.5, "log_every": 6,
                  "bound_every": 0}})
    levels = np.random.default_rng(0).integers(0, 17, size=(32, 1, 8, 8), dtype=np.uint8)
    result = train(params, levels, meta, cpu, progress=False)
    used = resolved_params(params, meta, cpu)
    path = save_checkpoint(tmp_path / "model.pt", {
        "params": used.to_dict(), "meta": meta, "step": result.step, "model": result.model.state_dict(),
        "ema": result.ema.state_dict(), "mlflow_run_id": None})
    trained = load_trained(path, used, cpu)
    diffusion, net = trained.diffusion, trained.network
    shape = tuple(trained.meta["shape"])
    score = score_from_diffusion(diffusion, net)
    T = diffusion.num_timesteps
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1e-5, 1 / T, 0.2371, 0.5, 0.9, 1.0])
    with torch.no_grad():
        s = score(x, t)
        assert s.shape == x.shape and torch.isfinite(s).all()
        steps = torch.tensor([0, 9, 499, T - 1])
        knots = score(x[:4], (steps + 1).double() / T)
        eps = net(x[:4], steps)
    assert eps.abs().mean() > 0.1  # trained away from the zero initialisation
    want = -eps.double() / (1 - diffusion.alphas_cumprod[steps]).sqrt()[:, None, None, None]
    # The float timestep i.0 embeds exactly as the integer i (float32 sines of the same
    # argument), so the network's outputs are the same bits; what is left is the score's cast
    # to float32 (2^-24 relative) and the float64 sqrt(1 - abar) of the SDE against the table's
    # (1e-16 / (1 - abar) <= 1e-12 relative): 2^-23 covers both.
    torch.testing.assert_close(knots.double(), want, rtol=2.0**-23, atol=0)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_score_from_eps_model_is_minus_net_over_std(name: str) -> None:
    sde = MAKE[name]()
    seen: list[torch.Tensor] = []

    def model(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        seen.append(tau)
        return 2 * x

    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.01, 0.5, 1.0], dtype=torch.float64)
    s = score_from_eps_model(sde, model, time_scale=999.0)(x, t)
    std = torch.from_numpy(REFERENCE[name](t.numpy())[3])[:, None]
    torch.testing.assert_close(s, -2 * x / std, rtol=1e-12, atol=0)
    torch.testing.assert_close(seen[0], 999.0 * t, rtol=1e-15, atol=0)


# --------------------------------------------------------------------------- score matching
def _optimal_eps_model(name: str, time_scale: float) -> Network:
    """For data N(M, S^2 I): -std(t) times the exact score of the marginal, as a function of the
    network time time_scale t."""

    def model(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        _, _, a, std = (torch.from_numpy(np.asarray(v))[:, None] for v in REFERENCE[name]((tau / time_scale).numpy()))
        return std * (x - a * M_DATA) / (a * a * S_DATA**2 + std * std)

    return model


def _minimum(name: str, t: np.ndarray, weighting: str) -> np.ndarray:
    """E[loss | t] of the optimal model: lambda(t) Var(z | x_t) / std^2 with Var(z | x_t) =
    a^2 S^2 / (a^2 S^2 + std^2) (the conditional-variance constant of DSM)."""
    _, g, a, std = REFERENCE[name](t)
    value = a**2 * S_DATA**2 / (a**2 * S_DATA**2 + std**2)
    return value if weighting == "sigma2" else g**2 / std**2 * value


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_dsm_with_the_exact_score_attains_the_known_minimum(name: str) -> None:
    """sigma2 weighting with t ~ U(eps, 1): the mean loss equals the integral of the minimum over
    t (scipy quad) within 5 standard errors; g2 weighting at fixed t likewise."""
    sde = MAKE[name]()
    dsm = DenoisingScoreMatching(sde, "sigma2")
    model = _optimal_eps_model(name, dsm.time_scale)
    B, D = 20000, 4
    gen = torch.Generator().manual_seed(3)
    x0 = M_DATA + S_DATA * torch.randn(B, D, generator=gen, dtype=torch.float64)
    loss = dsm.training_losses(model, x0, generator=gen)["loss"]
    want = integrate.quad(lambda t: _minimum(name, np.array(t), "sigma2"), dsm.eps, 1, epsabs=1e-12)[0] / (1 - dsm.eps)
    assert abs(loss.mean().item() - want) <= 5 * loss.std().item() / math.sqrt(B)
    g2 = DenoisingScoreMatching(sde, "g2")
    t = torch.full((B,), 0.3, dtype=torch.float64)
    loss = g2.training_losses(model, x0, t=t, generator=gen)["loss"]
    want = _minimum(name, np.array(0.3), "g2")
    assert abs(loss.mean().item() - want) <= 5 * loss.std().item() / math.sqrt(B)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_dsm_weightings_equal_a_direct_computation(name: str) -> None:
    """Any network: loss = lambda(t) mean_dims (s + z / std)^2 with s = -net(x_t, 999 t) / std,
    x_t = a x0 + std z, lambda = std^2 or g^2, all from the closed forms; and g2 = g^2 / std^2
    times sigma2 example by example."""
    sde = MAKE[name]()
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    model = lambda x, tau: x @ weight + torch.sin(tau)[:, None]
    x0 = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    z = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    t = torch.tensor([1e-5, 0.01, 0.2, 0.5, 0.8, 1.0], dtype=torch.float64)
    _, g, a, std = (torch.from_numpy(np.asarray(v))[:, None] for v in REFERENCE[name](t.numpy()))
    x_t = a * x0 + std * z
    s = -model(x_t, 999 * t) / std
    direct = ((s + z / std) ** 2).mean(1)
    sigma2 = DenoisingScoreMatching(sde, "sigma2").training_losses(model, x0, t=t, noise=z)["loss"]
    g2 = DenoisingScoreMatching(sde, "g2").training_losses(model, x0, t=t, noise=z)["loss"]
    torch.testing.assert_close(sigma2, std[:, 0] ** 2 * direct, rtol=1e-9, atol=0)
    torch.testing.assert_close(g2, g[:, 0] ** 2 * direct, rtol=1e-9, atol=0)
    torch.testing.assert_close(g2, (g / std)[:, 0] ** 2 * sigma2, rtol=1e-12, atol=0)


def test_dsm_timesteps_are_uniform_on_eps_1_and_per_example() -> None:
    dsm = DenoisingScoreMatching(VPSDE(), eps=0.25)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    batch = dsm.draw_timesteps(3, gens, "cpu")
    alone = dsm.draw_timesteps(1, [torch.Generator().manual_seed(2)], "cpu")
    assert batch[1] == alone[0] and batch.dtype == torch.float64
    t = dsm.draw_timesteps(20000, torch.Generator().manual_seed(0), "cpu")
    assert t.min() >= 0.25 and t.max() <= 1.0
    # Kolmogorov-Smirnov against U(0.25, 1): p far above 1e-4 for a correct draw.
    assert stats.kstest(t.numpy(), stats.uniform(0.25, 0.75).cdf).pvalue > 1e-4
    assert dsm.time_scale == 999.0


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"weighting": "l2"}, "weighting='l2'"),
    ({"eps": 0.0}, "eps=0.0"),
    ({"time_scale": -1.0}, "time_scale=-1.0"),
])
def test_dsm_refuses_bad_settings_by_name(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        DenoisingScoreMatching(VPSDE(), **kwargs)


# --------------------------------------------------------------------------- float timesteps
def _perturb(model: nn.Module) -> nn.Module:
    """Noise on every parameter, so zero-initialised layers do not hide the time input."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def test_mlp_learned_table_interpolates_float_timesteps() -> None:
    torch.manual_seed(0)
    model = MLP(dim=2, hidden=8, num_layers=2, timesteps=10, time_embedding="learned").eval()
    x = torch.randn(4, 2)
    t = torch.tensor([0, 3, 7, 9])
    # LongTensor t: today's network, written out (Linear(x) * table[t], softplus, read-out).
    h = x
    for layer in model.layers:
        h = nn.functional.softplus(layer.linear(h) * layer.embed.weight[t])
    assert torch.equal(model(x, t), model.out(h))
    assert torch.equal(model(x, t.float()), model(x, t))
    assert torch.equal(model(x, t.double()), model(x, t))
    layer = model.layers[0]
    w = torch.tensor([0.25, 0.5, 0.75, 0.0])
    rows = (1 - w)[:, None] * layer.embed.weight[t] + w[:, None] * layer.embed.weight[(t + 1).clamp(max=9)]
    torch.testing.assert_close(layer(x, t + w), layer.linear(x) * rows)
    # Clamped to the table at both ends.
    assert torch.equal(model(x, torch.full((4,), -0.5)), model(x, torch.zeros(4, dtype=torch.long)))
    assert torch.equal(model(x, torch.full((4,), 9.5)), model(x, torch.full((4,), 9)))


def test_rbf_mlp_heads_interpolate_float_timesteps() -> None:
    torch.manual_seed(0)
    model = RBFMLP(dim=2, hidden=6, timesteps=10, learn_sigma=True)
    x = torch.randn(4, 2)
    t = torch.tensor([0, 3, 7, 8])
    h = model.features(x)
    old = torch.cat([torch.einsum("boi,bi->bo", head.weight[t], h) for head in (model.mean_head, model.var_head)], 1)
    assert torch.equal(model(x, t), old)
    assert torch.equal(model(x, t.float()), model(x, t))
    # The heads are linear in their weights, so the output interpolates linearly too.
    w = torch.tensor([0.1, 0.5, 0.9, 0.3])
    between = (1 - w)[:, None] * model(x, t) + w[:, None] * model(x, t + 1)
    torch.testing.assert_close(model(x, t + w), between)


def test_shufflenet_learned_table_interpolates_float_timesteps() -> None:
    torch.manual_seed(0)
    model = _perturb(ShuffleUNet(1, 1, 8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, dropout=0.0,
                                 timesteps=10, time_embedding="learned", groups=2)).eval()
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 4, 9])
    assert torch.equal(model.embed_time(t, x.dtype), model.time_mlp(model.time_table.weight[t]))
    assert torch.equal(model(x, t.float()), model(x, t))
    w = torch.tensor([0.2, 0.6, 0.0])
    table = model.time_table.weight
    rows = (1 - w)[:, None] * table[t] + w[:, None] * table[(t + 1).clamp(max=9)]
    torch.testing.assert_close(model.embed_time(t + w, x.dtype), model.time_mlp(rows))
    assert not torch.equal(model(x, t + 0.5), model(x, t))
