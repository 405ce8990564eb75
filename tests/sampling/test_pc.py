"""Predictor-corrector sampling (ddpm.sampling.pc) driven by exact scores of known laws.

The scores here are written from the closed-form perturbation kernels of Song et al. 2021
(eqs. 9, 11, 14), independently of ddpm.score.sde: a Gaussian mixture perturbed by the kernel
N(a(t) x0, var(t) I) is the mixture of N(a mu_k, (a^2 s_k^2 + var) I), whose score is the
responsibility-weighted sum of the component scores. A Gaussian is the one-component case.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytest
import torch

from ddpm import seeding
from ddpm.diffusion import GaussianDiffusion
from ddpm.metrics.continuous import energy_distance
from ddpm.sampling.contract import CountingScore, StateRecorder
from ddpm.sampling.pc import (
    CORRECTORS,
    ORDERS,
    PREDICTORS,
    ancestral_step,
    annealed_langevin_step,
    langevin_step,
    pc_sample,
    pc_timesteps,
    reverse_diffusion_step,
)
from ddpm.schedules import get_beta_schedule
from ddpm.score.sde import VESDE, VPSDE, SubVPSDE, score_from_diffusion, sde_from_diffusion

F64 = torch.float64
BETA_MIN, BETA_MAX = 0.1, 20.0
# VE ladder for data within a few units of the origin: sigma_max above the largest pairwise
# distance of the mixture below (NCSNv2's technique 1).
SIGMA_MIN, SIGMA_MAX = 0.01, 10.0


# One torch thread and a forked RNG for every test here (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- closed forms
def _vp_log_mean(t: torch.Tensor) -> torch.Tensor:
    return -0.25 * t.square() * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN


# name -> t (float64 [B]) -> (mean coefficient a(t), kernel variance var(t)).
KERNELS: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "vp": lambda t: (_vp_log_mean(t).exp(), -torch.expm1(2 * _vp_log_mean(t))),
    "subvp": lambda t: (_vp_log_mean(t).exp(), torch.expm1(2 * _vp_log_mean(t)).square()),
    "ve": lambda t: (torch.ones_like(t), (SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t).square()),
}


def make_sde(name: str, N: int):
    if name == "vp":
        return VPSDE(BETA_MIN, BETA_MAX, N=N)
    if name == "subvp":
        return SubVPSDE(BETA_MIN, BETA_MAX, N=N)
    return VESDE(SIGMA_MIN, SIGMA_MAX, N=N)


# law name -> (means [K, D], stds [K], weights [K]).
LAWS = {
    "gaussian": (torch.tensor([[1.0, -0.5, 0.25]], dtype=F64), torch.tensor([0.6], dtype=F64),
                 torch.tensor([1.0], dtype=F64)),
    "mixture": (torch.tensor([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5]], dtype=F64),
                torch.tensor([0.3, 0.5, 0.4], dtype=F64), torch.tensor([0.5, 0.3, 0.2], dtype=F64)),
}


def mixture_score(kernel: Callable, law: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The exact score of the law ``law`` perturbed by ``kernel``, computed in float64:
    -sum_k r_k(x) (x - a mu_k) / c_k with c_k = a^2 s_k^2 + var and responsibilities
    r_k ~ w_k N(x; a mu_k, c_k I). Sums over the tiny K and D axes are written as matrix
    products, which torch runs much faster than reductions over short inner dimensions."""
    means, stds, weights = LAWS[law]
    D, ones_d, ones_k = means.shape[1], torch.ones(means.shape[1], dtype=F64), torch.ones(len(weights), dtype=F64)

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, var = kernel(torch.as_tensor(t, dtype=F64).expand(x.shape[0]))
        a, x64 = a[:, None], x.to(F64)
        c = a.square() * stds.square() + var[:, None]  # [B, K] component variances
        # ||x - a mu_k||^2 expanded; its terms are O(1e2) at most here, so cancellation costs
        # ~1e-14, far below anything the tests resolve.
        sq = (x64.square() @ ones_d)[:, None] - 2 * a * (x64 @ means.T) + a.square() * (means.square() @ ones_d)
        r = torch.softmax(weights.log() - 0.5 * D * c.log() - sq / (2 * c), dim=1)
        w = r / c
        return (-(x64 * (w @ ones_k)[:, None] - a * (w @ means))).to(x.dtype)

    return score


def draw_law(law: str, n: int, generator: torch.Generator) -> torch.Tensor:
    means, stds, weights = LAWS[law]
    k = torch.multinomial(weights, n, replacement=True, generator=generator)
    return means[k] + stds[k, None] * torch.randn(n, means.shape[1], generator=generator, dtype=F64)


def log_density(kernel: Callable, law: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log p_t(x) of the perturbed law, written directly (logsumexp over components)."""
    means, stds, weights = LAWS[law]
    a, var = kernel(t)
    c = a[:, None].square() * stds.square() + var[:, None]
    diff = x[:, None, :] - a[:, None, None] * means
    log_norm = -0.5 * x.shape[1] * (2 * math.pi * c).log()
    return torch.logsumexp(weights.log() + log_norm - diff.square().sum(-1) / (2 * c), dim=1)


@pytest.mark.parametrize("sde_name", list(KERNELS))
@pytest.mark.parametrize("law", list(LAWS))
def test_the_exact_scores_are_gradients_of_the_log_density(law: str, sde_name: str) -> None:
    """The tests' oracle: mixture_score equals autograd's gradient of log p_t (float64)."""
    g = torch.Generator().manual_seed(0)
    t = torch.rand(64, generator=g, dtype=F64)
    a, var = KERNELS[sde_name](t)
    x = a[:, None] * draw_law(law, 64, g) + var.sqrt()[:, None] * torch.randn(64, LAWS[law][0].shape[1], generator=g,
                                                                               dtype=F64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(log_density(KERNELS[sde_name], law, x, t).sum(), x)
    torch.testing.assert_close(mixture_score(KERNELS[sde_name], law)(x.detach(), t), grad, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- the law
N_SAMPLES, N_STEPS = 2000, 200
# Discretization bias at N_STEPS. With the exact score, the predictors' output on 1-D Gaussian
# data N(m, s^2) at 200 steps, computed exactly for the SDEs and laws here by propagating mean and
# variance through the affine steps, is off by at most 2% of s in the mean and 3.5% in the
# variance. The annealed_langevin corrector adds its own bias: its step e = k std(t)^2 <= k var_t (k = 2 snr^2,
# alpha <= 1) alone would hold N(m, v) at the variance v / (1 - k / 2), 2.6% high for snr = 0.16.
# In energy distance these are negligible: between 1-D Gaussians it grows like mu^2 / (sqrt(pi) s)
# for a shift mu and delta^2 s / (2 sqrt(pi)) for a relative scale error delta, < 4e-4 s in all,
# against margins of ~3e-3 (Gaussian) and ~1.5e-2 (mixture) at n = 2000. So 200 steps are enough
# for the distance to see the sampler's law rather than its step size. The moment checks, which
# resolve a few percent, add the biases to their tolerance. The denoised output aims at the law
# smoothed by the kernel at t = eps (variance 1e-4 at most), a smaller effect still.
MEAN_BIAS, VAR_BIAS = 0.02, 0.035 + 0.026
# The distance comparison is one-sided (a wrong sampler is farther from the law than two draws
# of the law are from each other) and made 32 times: a 1% family-wise error under a normal null
# needs 3.4 standard deviations (Bonferroni). (ED(law, law) - ED(law', law')) / hypot(errors),
# simulated 300 times per law at n = 2000, had mean ~0, standard deviation 0.56 (mixture) and 0.64
# (Gaussian) (the jackknife errors are conservative, Efron & Stein 1981) and a maximum of 1.6, so
# 3.5 leaves room for the right skew of a degenerate U-statistic. The 64 two-sided moment checks
# are averages of 2000 independent values, close to normal: 4 standard errors (6e-5 each).
Z_DISTANCE, Z_MOMENT = 3.5, 4.0

LAW_CASES = [
    (sde, predictor, corrector, "corrector_first")
    for sde in ("vp", "subvp", "ve")
    for predictor in ("euler_maruyama", "reverse_diffusion", "ancestral")
    # sub-VP has no ancestral chain, and its reverse_diffusion is its Euler-Maruyama step (below)
    if not (sde == "subvp" and predictor in ("ancestral", "reverse_diffusion"))
    for corrector in ("none", "annealed_langevin")
] + [("ve", "reverse_diffusion", "annealed_langevin", "predictor_first"),
      ("vp", "euler_maruyama", "annealed_langevin", "predictor_first")]


@functools.cache
def law_floor(law: str):
    """The energy distance between two independent draws of the law (the metric's floor)."""
    g = torch.Generator().manual_seed(1000)
    return energy_distance(draw_law(law, N_SAMPLES, g), draw_law(law, N_SAMPLES, g))


def assert_gaussian_moments(x: torch.Tensor) -> None:
    """Per dimension, the sample mean is m, and E||x - m||^2 / (D s^2) is 1, within Z_MOMENT
    standard errors plus the biases above. They resolve scale errors of ~10% (the energy distance
    at this n only ~20%)."""
    (m,), (s,), _ = LAWS["gaussian"]
    n, D = x.shape
    mean_tol = Z_MOMENT * x.std(0) / math.sqrt(n) + MEAN_BIAS * s
    assert ((x.mean(0) - m).abs() <= mean_tol).all(), (x.mean(0), m)
    ratio = (x - m).square().sum(1) / (D * s**2)
    tol = Z_MOMENT * ratio.std().item() / math.sqrt(n) + VAR_BIAS + MEAN_BIAS**2
    assert abs(ratio.mean().item() - 1) <= tol, (ratio.mean().item(), tol)


@pytest.mark.parametrize("law", ["gaussian", "mixture"])
@pytest.mark.parametrize(("sde_name", "predictor", "corrector", "order"), LAW_CASES)
def test_pc_samples_reproduce_the_law(law: str, sde_name: str, predictor: str, corrector: str, order: str) -> None:
    """PC samples driven by the exact score against fresh draws of the law: their energy
    distance is within Z_DISTANCE standard errors of the floor (the distance between two
    independent draws of the same size); for the Gaussian also the first two moments."""
    sde = make_sde(sde_name, N_STEPS)
    case = LAW_CASES.index((sde_name, predictor, corrector, order)) * 2 + (law == "mixture")
    x = pc_sample(sde, mixture_score(KERNELS[sde_name], law), (N_SAMPLES, LAWS[law][0].shape[1]),
                  predictor=predictor, corrector=corrector, order=order, dtype=F64,
                  generator=torch.Generator().manual_seed(case))
    assert torch.isfinite(x).all()
    model = energy_distance(x, draw_law(law, N_SAMPLES, torch.Generator().manual_seed(500 + case)))
    floor = law_floor(law)
    assert model.value - floor.value <= Z_DISTANCE * math.hypot(model.stderr, floor.stderr), (model, floor)
    if law == "gaussian":
        assert_gaussian_moments(x)


def test_sub_vp_reverse_diffusion_is_its_euler_maruyama_step() -> None:
    """sub-VP's discretization is the Euler-Maruyama step of size 1/N (as in score_sde), so
    reversing it is the Euler-Maruyama predictor: same samples from the same noise."""
    sde = make_sde("subvp", 40)
    score = mixture_score(KERNELS["subvp"], "mixture")
    runs = [pc_sample(sde, score, (50, 2), predictor=p, corrector="none", dtype=F64,
                      generator=torch.Generator().manual_seed(2)) for p in ("reverse_diffusion", "euler_maruyama")]
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- DDPM's step
def gaussian_eps_oracle(alphas_cumprod: torch.Tensor, m: torch.Tensor, s: float):
    """E[eps | x_t] for data N(m, s^2 I) under the discrete chain (code timestep t, long or float)."""

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = alphas_cumprod[t.round().long()][:, None]
        return (1 - abar).sqrt() * (x - abar.sqrt() * m) / (abar * s**2 + 1 - abar)

    return model


def discrete_score(model, alphas_cumprod: torch.Tensor):
    """s(x, t) = -eps(x, i) / sqrt(1 - abar_i) at score_sde's step index i = floor(t (N - 1))."""
    N = len(alphas_cumprod)

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        i = (t * (N - 1)).floor().long()
        return -model(x, i) / (1 - alphas_cumprod[i][:, None]).sqrt()

    return score


def test_ancestral_step_is_ddpm_step_with_variance_beta() -> None:
    """One VP ancestral step = the project's DDPM step x_t -> x_{t-1} with var_type fixed_large
    (sigma^2 = beta_t), given the same noise; the score is -eps / sqrt(1 - abar) of the same
    analytic eps. Both run in float64 along different formulas (posterior mean at the predicted
    x0 vs (x + beta s) / sqrt(1 - beta)), so they agree to a few float64 roundings."""
    N, m, s = 1000, torch.tensor([0.5, -1.0], dtype=F64), 0.7
    diffusion = GaussianDiffusion(get_beta_schedule("linear", N), var_type="fixed_large")
    model = gaussian_eps_oracle(diffusion.alphas_cumprod, m, s)
    score = discrete_score(model, diffusion.alphas_cumprod)
    grid = torch.linspace(1.0, 1e-3, N, dtype=F64)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 2
    for code_t in (N - 1, 500, 1):
        t = grid[N - 1 - code_t].expand(6)
        pc_x, pc_mean = ancestral_step(VPSDE(), score, x, t, generator=torch.Generator().manual_seed(code_t))
        tt = torch.full((6,), code_t, dtype=torch.long)
        out = diffusion.p_mean_variance(model, x, tt, clip_denoised=False)
        ddpm_x = diffusion.p_sample(model, x, tt, generator=torch.Generator().manual_seed(code_t),
                                    clip_denoised=False)["sample"]
        torch.testing.assert_close(pc_mean, out["mean"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pc_x, ddpm_x, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out["variance"][0, 0], diffusion.betas[code_t], rtol=0, atol=0)


def _ddpm_and_pc(diffusion: GaussianDiffusion, sde, score, model, shape, seed: int):
    """DDPM's ancestral loop and the PC ancestral sampler (no corrector) from the same noise:
    the PC sampler draws x_T and then one z per step from its generator, DDPM's loop gets the
    same x_T and draws the same z's (including the unused one at its last step). Also the PC sampler's score
    evaluations (``CountingScore``)."""
    g = torch.Generator().manual_seed(seed)
    x_T = seeding.randn(shape, g, "cpu", F64)
    ddpm = diffusion.p_sample_loop(model, shape, generator=g, noise=x_T, clip_denoised=False)
    counted = CountingScore(score)
    pc = pc_sample(sde, counted, shape, predictor="ancestral", corrector="none", dtype=F64,
                   generator=torch.Generator().manual_seed(seed))
    return ddpm, pc, counted.calls


def test_pc_ancestral_loop_is_ddpm_ancestral_loop() -> None:
    """The whole PC ancestral sampler on VPSDE(0.1, 20, N=1000) (the project's linear schedule)
    with its denoised last mean equals DDPM's Algorithm 2 with sigma^2 = beta_t: DDPM's last
    step adds no noise, PC returns the noise-free mean of its last step. The step index
    floor(t (N - 1)) of t = linspace(1, 1e-3, N)[i] is N - 1 - i for every i < 1 / eps.
    Rounding differences per step (~1e-16) may grow by at most the product of the steps' gains
    1 / sqrt(1 - beta) (exp(int beta / 2) ~ 150), far below the 1e-10 tolerance."""
    N, m, s = 1000, torch.tensor([0.5, -1.0, 2.0], dtype=F64), 0.4
    diffusion = GaussianDiffusion(get_beta_schedule("linear", N), var_type="fixed_large")
    model = gaussian_eps_oracle(diffusion.alphas_cumprod, m, s)
    score = discrete_score(model, diffusion.alphas_cumprod)
    ddpm, pc, nfe = _ddpm_and_pc(diffusion, VPSDE(N=N), score, model, (8, 3), seed=3)
    torch.testing.assert_close(pc, ddpm, rtol=1e-10, atol=1e-10)
    assert nfe == N


def test_pc_ancestral_on_sde_from_diffusion_is_ddpm_for_any_schedule() -> None:
    """For a DDPM (cosine schedule, T = 50, an eps network) sampled through
    score_from_diffusion on sde_from_diffusion, the PC ancestral sampler's grid
    linspace(1, 1/T, T) hits the knots t = (i + 1) / T, where the network sees integer code
    timesteps: it is DDPM's ancestral loop with sigma^2 = beta_t. (The knots are reached up to
    the rounding of t T in float64, which moves abar(t) by ~1e-15 relative.)"""
    T, m, s = 50, torch.tensor([1.0, -0.5], dtype=F64), 0.5
    diffusion = GaussianDiffusion(get_beta_schedule("cosine", T), var_type="fixed_large")
    model = gaussian_eps_oracle(diffusion.alphas_cumprod, m, s)
    sde = sde_from_diffusion(diffusion)
    ddpm, pc, _ = _ddpm_and_pc(diffusion, sde, score_from_diffusion(diffusion, model), model, (5, 2), seed=4)
    torch.testing.assert_close(pc, ddpm, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- corrector steps
@pytest.mark.parametrize("snr", [0.16, 0.4])
@pytest.mark.parametrize("corrector", ["langevin", "annealed_langevin"])
def test_one_corrector_step_on_the_exact_marginal(corrector: str, snr: float) -> None:
    """One corrector step on x ~ p_t = N(m, v I) (VE, so alpha = 1, point-mass data at m:
    v = sigma(t)^2 and s = -(x - m) / v exactly), D = 8.

    With u = x - m and the step e: E||x' - m||^2 = E[||u||^2 (1 - e / v)^2 + 2 e ||z||^2]. For
    ``annealed_langevin``, e = k v with k = 2 snr^2, so the ratio E||x' - m||^2 / (D v) is 1 + k^2 (Langevin's own
    O(step) bias). For ``langevin`` with per-example norms, e = k v^2 ||z||^2 / ||u||^2, and with
    E||z||^4 = D (D + 2) and E[1 / ||u||^2] = 1 / (v (D - 2)) the ratio is
    1 + k (8 + k (D + 2)) / (D - 2). Batch-averaged norms would give ~1 + k^2. The tolerance is 4
    standard errors of the Monte Carlo mean (finite variance for D > 4)."""
    D, n, t = 8, 20_000, 0.5
    sde = VESDE(SIGMA_MIN, SIGMA_MAX, N=100)
    _, var = KERNELS["ve"](torch.tensor(t, dtype=F64))
    v = var.item()
    m = torch.linspace(-1, 1, D, dtype=F64)
    x = m + math.sqrt(v) * torch.randn(n, D, generator=torch.Generator().manual_seed(7), dtype=F64)
    score = lambda y, _: -(y - m) / v
    step = langevin_step if corrector == "langevin" else annealed_langevin_step
    x_new, x_mean = step(sde, score, x, torch.full((n,), t, dtype=F64), snr,
                         generator=torch.Generator().manual_seed(8))
    k = 2 * snr**2
    expected = 1 + k * (8 + k * (D + 2)) / (D - 2) if corrector == "langevin" else 1 + k**2
    ratios = (x_new - m).square().sum(1) / (D * v)
    stderr = ratios.std().item() / math.sqrt(n)
    assert abs(ratios.mean().item() - expected) <= 4 * stderr, (ratios.mean().item(), expected, stderr)
    assert not torch.equal(x_new, x_mean)


# --------------------------------------------------------------------------- bookkeeping
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("corrector_steps", [1, 3])
@pytest.mark.parametrize("corrector", CORRECTORS)
@pytest.mark.parametrize("predictor", PREDICTORS)
def test_nfe_is_the_exact_number_of_score_evaluations(predictor: str, corrector: str, corrector_steps: int,
                                                      order: str) -> None:
    N = 6
    calls: list[int] = []

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return -x / (1 + KERNELS["ve"](t)[1][:, None]).to(x.dtype)

    counted = CountingScore(score)
    pc_sample(make_sde("ve", N), counted, (3, 2), predictor=predictor, corrector=corrector,
              corrector_steps=corrector_steps, order=order, generator=torch.Generator().manual_seed(0))
    expected = N * ((predictor != "none") + (corrector != "none") * corrector_steps)
    assert counted.calls == len(calls) == expected
    assert all(b == 3 for b in calls)


@pytest.mark.parametrize(("sde_name", "predictor", "corrector"), [
    ("ve", "reverse_diffusion", "langevin"), ("vp", "ancestral", "annealed_langevin"),
    ("subvp", "euler_maruyama", "langevin"),
])
def test_a_sample_does_not_depend_on_its_batch(sde_name: str, predictor: str, corrector: str) -> None:
    """Example b drawn in a batch of 5 equals example b drawn alone with its generator, bitwise.

    Nothing couples examples: every operation of the sampler and of this score is elementwise or
    reduces one example's row (norms over D = 2 values, sums over 3 components), so both runs do
    the same floating-point operations on b's values in the same order. (A network score could
    differ at rounding level between batch shapes, through BLAS blocking; averaging the Langevin
    norms over the batch, as score_sde does, changes the sample at O(1).)"""
    sde = make_sde(sde_name, 60)
    score = mixture_score(KERNELS[sde_name], "mixture")
    kwargs = dict(predictor=predictor, corrector=corrector, corrector_steps=2, dtype=F64)
    batch = pc_sample(sde, score, (5, 2), generator=seeding.generators(0, "sample", range(5)), **kwargs)
    alone = pc_sample(sde, score, (1, 2), generator=seeding.generators(0, "sample", [3]), **kwargs)
    assert torch.equal(alone[0], batch[3])
    assert not torch.allclose(batch[3], batch[2])


@pytest.mark.parametrize("order", ORDERS)
def test_order_and_denoising_follow_the_step_functions(order: str) -> None:
    """pc_sample composes the step functions in the stated order on t = linspace(1, eps, N), and
    denoise=True returns the noise-free mean of the last update of the last step."""
    N, eps, snr = 4, 1e-2, 0.3
    sde = make_sde("ve", N)
    score = mixture_score(KERNELS["ve"], "mixture")
    g = torch.Generator().manual_seed(9)
    x = sde.prior_sampling((3, 2), g, dtype=F64)
    for t in torch.linspace(1, eps, N, dtype=F64):
        steps = [lambda y, tt: reverse_diffusion_step(sde, score, y, tt, g),
                 lambda y, tt: annealed_langevin_step(sde, score, y, tt, snr, g)]
        for step in (steps if order == "predictor_first" else steps[::-1]):
            x, x_mean = step(x, t.expand(3))
    grid, seen = torch.linspace(1, eps, N, dtype=F64), []
    timed = lambda y, tt: (seen.append(tt), score(y, tt))[1]  # noqa: E731  (the t each call sees)
    for denoise, expected in ((True, x_mean), (False, x)):
        seen.clear()
        out = pc_sample(sde, timed, (3, 2), predictor="reverse_diffusion", corrector="annealed_langevin", snr=snr,
                        eps=eps, order=order, denoise=denoise, dtype=F64, generator=torch.Generator().manual_seed(9))
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        # The grid it stepped on: both updates of step i at t = linspace(1, eps, N)[i], for every example.
        torch.testing.assert_close(torch.stack(seen), grid.repeat_interleave(2)[:, None].expand(-1, 3), rtol=0, atol=0)
        torch.testing.assert_close(pc_timesteps(sde, N, eps), grid, rtol=0, atol=0)


def test_trajectory_and_progress() -> None:
    N = 5
    sde = make_sde("vp", N * 5)
    score = mixture_score(KERNELS["vp"], "gaussian")
    seen: list[tuple[int, int]] = []
    traj = StateRecorder()
    x = pc_sample(sde, score, (4, 3), predictor="euler_maruyama", num_steps=N, on_state=traj,
                  on_step=lambda done, total: seen.append((done, total)), generator=torch.Generator().manual_seed(1))
    assert traj.keys == list(range(N, -1, -1))
    assert traj.stacked().shape == (N + 1, 4, 3)
    torch.testing.assert_close(traj.states[0], sde.prior_sampling((4, 3), torch.Generator().manual_seed(1)))
    torch.testing.assert_close(traj.states[-1], x)
    assert traj.states[-1] is not x  # a copy
    assert seen == [(i, N) for i in range(1, N + 1)]
    some = StateRecorder()
    pc_sample(sde, score, (4, 3), predictor="euler_maruyama", num_steps=N, states=[0, 2], on_state=some,
              generator=torch.Generator().manual_seed(1))
    assert some.keys == [2, 0]
    torch.testing.assert_close(some.states[0], traj.states[N - 2])
    with pytest.raises(ValueError, match=rf"trajectory steps \[{N + 1}\] lie outside 0..{N}"):
        pc_sample(sde, score, (4, 3), predictor="euler_maruyama", num_steps=N, states=[N + 1], on_state=some)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("key", "value", "accepted"), [
    ("predictor", "heun", PREDICTORS), ("corrector", "hmc", CORRECTORS), ("order", "interleaved", ORDERS),
])
def test_unknown_names_are_refused_with_the_accepted_values(key: str, value: str, accepted: tuple) -> None:
    sde = make_sde("ve", 10)
    with pytest.raises(ValueError) as err:
        pc_sample(sde, lambda x, t: -x, (2, 2), **{key: value})
    message = str(err.value)
    assert f"{key}={value!r}" in message
    assert all(name in message for name in accepted)


@pytest.mark.parametrize(("sde_name", "kwargs", "match"), [
    ("subvp", dict(predictor="ancestral"), "SubVPSDE"),
    ("ve", dict(predictor="reverse_diffusion", num_steps=5), "num_steps must equal sde.N=10"),
    ("ve", dict(predictor="ancestral", num_steps=5), "num_steps must equal sde.N=10"),
    ("ve", dict(snr=0.0), "snr=0.0"),
    ("ve", dict(corrector_steps=0), "corrector_steps=0"),
    ("ve", dict(num_steps=0, predictor="euler_maruyama"), "num_steps=0"),
    ("ve", dict(eps=1.0), "eps=1.0"),
])
def test_bad_settings_are_refused(sde_name: str, kwargs: dict, match: str) -> None:
    sde = make_sde(sde_name, 10)
    with pytest.raises(ValueError, match=match):
        pc_sample(sde, lambda x, t: -x, (2, 2), **kwargs)
