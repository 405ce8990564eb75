"""The probability-flow ODE (ddpm.score.ode) against closed forms.

Gaussian data, and mixtures of Gaussians, stay Gaussian mixtures under the VP, sub-VP and VE
SDEs, so their scores and their densities at every t are analytic. The marginal coefficients
below are written from the formulas of Song et al. 2021 (LANDSCAPE.md section 1), not taken
from ddpm.score.sde, so they check the SDE module too.

Solver tolerance. Dopri5 accepts a step when the RMS over the F = D + 1 state components of
error / (atol + rtol |y|) is below 1, so each step's error vector has Euclidean norm at most
sqrt(F) (atol + rtol max|y|). Summed over the steps taken (nfe = 2 + 6 steps), that bounds the
error of the log-density integral, and the error of z enters log p through |grad prior_logp|
= |z| / sigma_prior^2. ``solver_bound`` is that sum: a worst case (Dopri5 advances with its
fifth-order solution while the estimate is for the fourth-order one, so real errors are much
smaller), yet a wrong divergence, prior or offset is off by whole nats.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from ddpm.metrics import energy_distance
from ddpm.sampling.contract import CountingScore, StateRecorder
from ddpm.sampling.ode import denoise_step, ode_sample
from ddpm.schedules import get_beta_schedule
from ddpm.score.ode import EXACT_DIVERGENCE_MAX_DIM, dequantization_offset, log_likelihood, ode_bpd, ode_nll
from ddpm.score.sde import VESDE, VPSDE, SubVPSDE, sde_from_diffusion
from ddpm.seeding import generators

BETA_MIN, BETA_MAX, SIGMA_MIN, SIGMA_MAX = 0.1, 20.0, 0.01, 50.0
SDES = {"vp": VPSDE(BETA_MIN, BETA_MAX), "subvp": SubVPSDE(BETA_MIN, BETA_MAX), "ve": VESDE(SIGMA_MIN, SIGMA_MAX)}
PRIOR_STD = {"vp": 1.0, "subvp": 1.0, "ve": SIGMA_MAX}
RTOL, ATOL = 1e-7, 1e-9  # tight, so the bound below is far under the effects tested


# One torch thread and a forked RNG for every test here (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def coefficients(kind: str, t) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean coefficient and std of p_t(x | x0) (Song et al. 2021, eqs. 29, 33; VE's std as
    score_sde's, the law of data entering at sigma_min)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if kind == "ve":
        return torch.ones_like(t), SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t
    log_mean = -0.25 * t**2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
    one_minus_abar = -torch.expm1(2 * log_mean)
    return log_mean.exp(), one_minus_abar.sqrt() if kind == "vp" else one_minus_abar


class Mixture:
    """sum_k w_k N(mu_k, s_k^2 I) in D dimensions, perturbed by an SDE: at time t it is
    sum_k w_k N(a mu_k, (a^2 s_k^2 + std^2) I) with (a, std) = coefficients(kind, t)."""

    def __init__(self, kind: str, weights, means, stds) -> None:
        self.kind = kind
        self.log_w = torch.tensor(weights, dtype=torch.float64).log()
        self.means = torch.tensor(means, dtype=torch.float64)  # [K, D]
        self.stds = torch.tensor(stds, dtype=torch.float64)

    def _components(self, t: torch.Tensor):
        a, std = coefficients(self.kind, t)  # [B]
        mean = a[:, None, None] * self.means  # [B, K, D]
        var = a[:, None] ** 2 * self.stds**2 + std[:, None] ** 2  # [B, K]
        return mean, var

    def _log_joint(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, var = self._components(t)
        diff = x.flatten(1)[:, None, :] - mean
        D = diff.shape[-1]
        log_joint = self.log_w - 0.5 * D * torch.log(2 * math.pi * var) - 0.5 * diff.square().sum(-1) / var
        return log_joint, diff, var

    def log_density(self, x: torch.Tensor, t: float) -> torch.Tensor:
        t = torch.full((x.shape[0],), t, dtype=torch.float64)
        return torch.logsumexp(self._log_joint(x.to(torch.float64), t)[0], dim=1)

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log_joint, diff, var = self._log_joint(x, torch.as_tensor(t, dtype=torch.float64).to(x.device))
        resp = torch.softmax(log_joint, dim=1).to(x.dtype)  # [B, K]
        return -(resp[..., None] * diff.to(x.dtype) / var[..., None].to(x.dtype)).sum(1).reshape(x.shape)

    def sample(self, n: int, t: float, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        k = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=g)
        mean, var = self._components(torch.full((n,), t, dtype=torch.float64))
        picked_mean, picked_var = mean[torch.arange(n), k], var[torch.arange(n), k]
        return picked_mean + picked_var.sqrt()[:, None] * torch.randn(n, self.means.shape[1], generator=g,
                                                                       dtype=torch.float64)


def gaussian(kind: str, D: int, m: float = 0.7, s: float = 0.5) -> Mixture:
    return Mixture(kind, [1.0], [[m] * D], [s])


MIXTURE_2D = ([0.5, 0.3, 0.2], [[-1.5, 0.5], [1.0, 1.0], [0.5, -1.5]], [0.3, 0.5, 0.4])


def prior_logp(kind: str, z: torch.Tensor) -> torch.Tensor:
    return torch.distributions.Normal(0.0, PRIOR_STD[kind]).log_prob(z.to(torch.float64)).flatten(1).sum(1)


def solver_bound(out: dict, kind: str, rtol: float = RTOL, atol: float = ATOL) -> torch.Tensor:
    """The sum of the per-step error bounds the controller enforces (module docstring) [B]."""
    z = out["z"].flatten(1)
    steps = (out["nfe"] - 2) / 6
    scale = torch.maximum(z.abs().amax(1), out["delta_logp"].abs())
    per_step = math.sqrt(z.shape[1] + 1) * (atol + rtol * scale)
    return steps * per_step * (1 + z.norm(dim=1) / PRIOR_STD[kind] ** 2)


def expected_logp(law: Mixture, x: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """The ODE model's exact log-density: the flow carries p_eps to p_1 (change of variables,
    log p_eps(x) - log p_1(z)), and the model puts the prior at t = 1 instead of p_1."""
    return law.log_density(x, eps) - law.log_density(z, 1.0) + prior_logp(law.kind, z)


def draw(shape, seed: int, m: float = 0.7, s: float = 0.5) -> torch.Tensor:
    return m + s * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- log-likelihood against closed forms --------------------------------------------------------


@pytest.mark.parametrize("kind, D, eps", [("vp", 3, 1e-5), ("subvp", 3, 1e-5), ("ve", 3, 1e-5), ("vp", 3, 0.2),
                                         ("vp", 64, 1e-5), ("ve", 64, 1e-5), ("vp", 65, 1e-5)])
def test_log_likelihood_of_gaussian_data_is_the_closed_form(kind, D, eps):
    # eps = 0.2 checks the start of the integral: the density is that of x at time eps.
    law = gaussian(kind, D)
    x = draw((4, D), seed=D)
    out = log_likelihood(SDES[kind], law.score, x, eps=eps, rtol=RTOL, atol=ATOL)
    # The flow of a Gaussian keeps (x - mean_t) / std_t fixed: z is affine in x.
    (a0, s0), (a1, s1) = coefficients(kind, eps), coefficients(kind, 1.0)
    v0, v1 = a0**2 * 0.25 + s0**2, a1**2 * 0.25 + s1**2
    z = a1 * 0.7 + (v1 / v0).sqrt() * (x - a0 * 0.7)
    expected = expected_logp(law, x, z, eps)
    bound = solver_bound(out, kind)
    assert out["exact_divergence"] is (D <= EXACT_DIVERGENCE_MAX_DIM)
    assert ((out["logp"] - expected).abs() <= bound).all(), (out["logp"] - expected, bound)
    assert ((out["delta_logp"] - 0.5 * D * torch.log(v1 / v0)).abs() <= bound).all()
    assert torch.allclose(out["prior_logp"] + out["delta_logp"], out["logp"])
    # z: the same per-step bound, each step's error stretched at most by the flow's expansion.
    z_bound = (out["nfe"] - 2) / 6 * math.sqrt(D + 1) * (ATOL + RTOL * z.abs().max()) * (v1 / v0).sqrt()
    assert ((out["z"] - z).norm(dim=1) <= z_bound).all()


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_log_likelihood_of_a_2d_mixture_is_its_density_at_eps(kind):
    # A nonlinear score: the divergence depends on the state, and the steps on the example.
    law, eps = Mixture(kind, *MIXTURE_2D), 1e-5
    x = torch.tensor([[-1.5, 0.5], [1.2, 0.8], [0.0, 0.0], [0.5, -1.9], [3.0, 3.0]], dtype=torch.float64)
    out = log_likelihood(SDES[kind], law.score, x, eps=eps, rtol=RTOL, atol=ATOL)
    expected = expected_logp(law, x, out["z"], eps)
    assert out["exact_divergence"] is True
    assert ((out["logp"] - expected).abs() <= solver_bound(out, kind)).all(), out["logp"] - expected


def test_hutchinson_estimate_is_unbiased_for_the_exact_divergence():
    # One point of an 8-D mixture, 400 times with 400 per-example probe streams: the mean of
    # the estimates must match the exact trace within its standard error. The ODE's path does
    # not depend on the probe, so the estimate's expectation is the exact integral.
    means = torch.randn(3, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64).tolist()
    law = Mixture("vp", [0.4, 0.35, 0.25], means, [0.4, 0.6, 0.5])
    x = law.sample(1, 1e-5, seed=2).repeat(400, 1)
    exact = log_likelihood(SDES["vp"], law.score, x[:1], rtol=1e-6, atol=1e-8)
    est = log_likelihood(SDES["vp"], law.score, x, rtol=1e-6, atol=1e-8, exact_divergence=False,
                         generator=generators(0, "bound", range(400)))
    assert est["exact_divergence"] is False
    spread = est["delta_logp"].std()
    stderr = spread / math.sqrt(400)
    assert spread > 0.1  # off-diagonal Jacobian terms make the estimate random
    assert abs(est["delta_logp"].mean() - exact["delta_logp"][0]) < 4 * stderr + solver_bound(exact, "vp", 1e-6, 1e-8)
    # Seeded per example: the same stream gives the same estimate, another stream another one.
    again = log_likelihood(SDES["vp"], law.score, x[:2], rtol=1e-6, atol=1e-8, exact_divergence=False,
                           generator=generators(0, "bound", [7, 3]))
    assert torch.allclose(again["logp"], est["logp"][[7, 3]], rtol=0, atol=1e-10)
    assert est["logp"][7] != est["logp"][3]


# --- batch independence -------------------------------------------------------------------------


def test_an_examples_log_likelihood_does_not_depend_on_its_batch():
    law, sde = Mixture("vp", *MIXTURE_2D), SDES["vp"]
    x0 = torch.tensor([[0.3, -0.4]], dtype=torch.float64)
    others = torch.tensor([[6.0, -7.0], [-1.5, 0.5], [0.01, 12.0]], dtype=torch.float64)
    for exact in (True, False):
        alone = log_likelihood(sde, law.score, x0, exact_divergence=exact, generator=generators(0, "bound", [0]))
        batch = log_likelihood(sde, law.score, torch.cat([x0, others]), exact_divergence=exact,
                               generator=generators(0, "bound", [0, 1, 2, 3]), max_batch=2)
        # The others need other step sizes (more steps), yet example 0 takes exactly its own:
        # the same steps, the same arithmetic, so the same result up to rounding.
        assert batch["nfe"][0] == alone["nfe"][0] < batch["nfe_total"]
        assert abs(batch["logp"][0] - alone["logp"][0]) < 1e-10
    # NFE accounting: one example alone makes exactly its own evaluations.
    calls = []
    log_likelihood(sde, lambda x, t: calls.append(1) or law.score(x, t), x0, exact_divergence=False,
                   generator=generators(0, "bound", [0]))
    assert alone["nfe"].tolist() == [alone["nfe_total"]] == [len(calls)]


def test_a_shared_step_solver_would_couple_the_batch():
    # Why torchode: scipy's RK45 (score_sde's solver) on the same Gaussian likelihood ODE takes
    # one step size for the whole batch, so example 0 moves when the batch changes.
    D, eps = 2, 1e-5

    def rhs(t, y):  # VP, N(0.7, 0.5^2) data: drift and its divergence in closed form
        a, std = coefficients("vp", t)
        beta = BETA_MIN + t * (BETA_MAX - BETA_MIN)
        v = float(a**2 * 0.25 + std**2)
        x = y.reshape(-1, D + 1)[:, :D]
        drift = -0.5 * beta * x + 0.5 * beta * (x - float(a) * 0.7) / v
        div = np.full((len(x), 1), D * (-0.5 * beta + 0.5 * beta / v))
        return np.concatenate([drift, div], axis=1).ravel()

    def scipy_logp(x):
        y0 = np.concatenate([x, np.zeros((len(x), 1))], axis=1).ravel()
        y1 = integrate.solve_ivp(rhs, (eps, 1.0), y0, rtol=1e-5, atol=1e-5, method="RK45").y[:, -1]
        y1 = y1.reshape(-1, D + 1)
        return prior_logp("vp", torch.from_numpy(y1[:, :D])) + torch.from_numpy(y1[:, D])

    x0, others = np.array([[0.3, -0.4]]), np.array([[6.0, -7.0], [0.01, 12.0]])
    scipy_shift = abs(float(scipy_logp(np.concatenate([x0, others]))[0] - scipy_logp(x0)[0]))
    law = gaussian("vp", D)
    ours = [log_likelihood(SDES["vp"], law.score, torch.from_numpy(x))["logp"][0] for x in
            (x0, np.concatenate([x0, others]))]
    assert scipy_shift > 1e-8 > abs(float(ours[1] - ours[0]))


# --- bits/dim -------------------------------------------------------------------------------------


def test_dequantization_offset_for_this_projects_scaling():
    assert dequantization_offset(17) == 3.0
    assert dequantization_offset(256) == pytest.approx(6.994353, abs=1e-6)


def test_ode_bpd_is_the_dequantized_expectation_of_the_gaussian_model():
    # VP and N(m, s^2) data: the ODE model is exactly Gaussian, N(mu_q, v_q) per dimension (the
    # prior pulled back through the affine flow), so E_u[-log2 q(x + Delta (u - 1/2))] is closed
    # form: with E(y - mu_q)^2 = (x - mu_q)^2 + Delta^2 / 12. 48 copies of one 8x8 digit-like
    # image, each with its own dequantization stream, give the Monte Carlo mean and its error.
    K, m, s, eps = 17, 0.1, 0.6, 1e-5
    delta = 2 / (K - 1)
    levels = torch.arange(64, dtype=torch.float64).remainder(K).reshape(1, 1, 8, 8)
    image = 2 * levels / (K - 1) - 1
    law = gaussian("vp", 64, m=m, s=s)
    n = 48
    out = ode_bpd(SDES["vp"], law.score, image.repeat(n, 1, 1, 1), K, repeats=2,
                  generator=generators(0, "bound", range(n)), rtol=1e-6, atol=1e-8)
    (a0, s0), (a1, s1) = coefficients("vp", eps), coefficients("vp", 1.0)
    v0, v1 = a0**2 * s**2 + s0**2, a1**2 * s**2 + s1**2
    r = (v1 / v0).sqrt()
    mu_q, v_q = a0 * m - a1 * m / r, 1.0 / r**2
    x = image.flatten()
    nats = 0.5 * torch.log(2 * math.pi * v_q) + ((x - mu_q) ** 2 + delta**2 / 12) / (2 * v_q)
    expected = float(nats.mean() / math.log(2)) + math.log2((K - 1) / 2)
    stderr = float(out["bpd"].std()) / math.sqrt(n)
    assert out["bpd_repeats"].shape == (n, 2) and out["repeats"] == 2 and out["exact_divergence"] is True
    assert (out["rtol"], out["atol"], out["num_levels"]) == (1e-6, 1e-8, K)
    assert abs(float(out["bpd"].mean()) - expected) < 4 * stderr + 1e-4
    # The offset, checked independently: the model's probability of the image's bins (normal
    # CDFs) in bits/dim lies just below the dequantized value (Jensen; the gap is second order
    # in Delta / sqrt(v_q)), and a wrong offset would be bits away.
    normal = stats.norm(loc=float(mu_q), scale=float(v_q.sqrt()))
    mass = normal.cdf(x.numpy() + delta / 2) - normal.cdf(x.numpy() - delta / 2)
    discrete = -np.log2(mass).mean()
    assert 0 <= expected - discrete < 0.01


def test_ode_bpd_of_an_image_does_not_depend_on_its_batch():
    K = 17
    law = gaussian("vp", 64, m=0.1, s=0.6)
    v = torch.arange(64 * 3, dtype=torch.float64).remainder(K).reshape(3, 1, 8, 8)
    v[1], v[2] = 0, K - 1  # an all-black and an all-white image beside it
    images = 2 * v / (K - 1) - 1
    alone = ode_bpd(SDES["vp"], law.score, images[:1], K, generator=generators(0, "bound", [5]))
    batch = ode_bpd(SDES["vp"], law.score, images, K, generator=generators(0, "bound", [5, 6, 7]))
    assert abs(float(alone["bpd"][0] - batch["bpd"][0])) < 1e-10
    assert alone["nfe"][0] == batch["nfe"][0]


def test_ode_nll_is_nats_per_dim_without_offset():
    law = Mixture("vp", *MIXTURE_2D)
    x = torch.tensor([[0.2, 0.1], [-1.4, 0.6]], dtype=torch.float64)
    ll = log_likelihood(SDES["vp"], law.score, x)
    nll = ode_nll(SDES["vp"], law.score, x)
    assert torch.equal(nll["nll"], -ll["logp"] / 2)
    assert nll["rtol"] == 1e-5 and nll["exact_divergence"] is True


def test_ode_bpd_refuses_data_off_the_grid():
    law = gaussian("vp", 4)
    with pytest.raises(ValueError, match="17-level grid"):
        ode_bpd(SDES["vp"], law.score, torch.full((1, 4), 0.03, dtype=torch.float64), 17)
    with pytest.raises(ValueError, match="repeats=0"):
        ode_bpd(SDES["vp"], law.score, torch.zeros((1, 4), dtype=torch.float64), 17, repeats=0)


# --- sampling -------------------------------------------------------------------------------------


def counted_ode_sample(sde, score, shape_or_noise, **kwargs) -> tuple[torch.Tensor, torch.Tensor, int]:
    """ode_sample's samples, each example's NFE (``on_nfe``, reported once) and the batched score
    calls it made (``CountingScore``)."""
    counted, nfe = CountingScore(score), []
    x = ode_sample(sde, counted, shape_or_noise, on_nfe=nfe.append, **kwargs)
    assert len(nfe) == 1
    return x, nfe[0], counted.calls


@pytest.mark.parametrize("kind, law_args", [("vp", MIXTURE_2D), ("ve", ([1.0], [[0.7, -0.3]], [0.5]))])
def test_ode_sample_with_the_exact_score_reproduces_the_law(kind, law_args):
    law, eps, n = Mixture(kind, *law_args), 1e-3, 600
    # The law at eps is what the ODE carries the prior to: no denoising step after it.
    x, nfe, calls = counted_ode_sample(SDES[kind], law.score, (n, 2), eps=eps,
                                       generator=generators(0, "sample", range(n)), dtype=torch.float64, denoise=False)
    reference, other = law.sample(n, eps, seed=1), law.sample(n, eps, seed=2)
    model = energy_distance(x, reference)
    floor = energy_distance(other, reference)
    # Indistinguishable from real draws: as close as a second real draw, within the errors.
    assert model.value < floor.value + 3 * math.hypot(model.stderr, floor.stderr)
    assert abs(model.value) < 3 * model.stderr
    # The check has power at this size: it rejects the samples mirrored through 0 (the same
    # spread, the modes misplaced).
    far = energy_distance(-x, reference)
    assert far.value > floor.value + 3 * math.hypot(far.stderr, floor.stderr)
    # The batch is evaluated as a whole until its slowest example is done.
    assert nfe.shape == (n,) and int(nfe.max()) == calls


def test_ode_sample_is_per_example_and_records_its_trajectory():
    law, sde = Mixture("vp", *MIXTURE_2D), SDES["vp"]
    gens = generators(3, "sample", range(4))
    traj = StateRecorder()
    x, nfe, _ = counted_ode_sample(sde, law.score, (4, 2), generator=gens, on_state=traj)
    noise = sde.prior_sampling((4, 2), generators(3, "sample", range(4)))
    assert x.dtype == torch.float32 and traj.stacked().shape == (11, 4, 2)
    assert traj.keys[0] == 1.0 and traj.keys[-1] == pytest.approx(1e-3)
    # The trajectory holds the ODE's states, the last one x(eps); the sample is x(eps) denoised.
    plain = ode_sample(sde, law.score, noise.clone(), denoise=False)
    assert torch.equal(traj.states[0], noise) and torch.equal(traj.states[-1], plain)
    torch.testing.assert_close(x, denoise_step(sde, law.score, plain, 1e-3), rtol=0, atol=0)
    # The same noise in another batch (first two examples only) gives the same samples.
    part, part_nfe, _ = counted_ode_sample(sde, law.score, noise[:2].clone())
    assert torch.allclose(part, x[:2], rtol=0, atol=1e-6)
    assert torch.equal(part_nfe, nfe[:2])
    some = StateRecorder()
    ode_sample(sde, law.score, noise, states=[0.5, 1.0], on_state=some)
    assert some.keys == [1.0, 0.5]
    with pytest.raises(ValueError, match="outside"):
        ode_sample(sde, law.score, noise, states=[1e-4], on_state=some)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{"rtol": 0.0}, {"atol": -1e-5}, {"eps": 0.0}, {"eps": float("nan")},
                                 {"eps": 1.0}])
def test_non_positive_tolerances_and_eps_are_refused(bad):
    law, sde = gaussian("vp", 2), SDES["vp"]
    name = next(iter(bad))
    x = torch.zeros((1, 2), dtype=torch.float64)
    for call in (lambda: log_likelihood(sde, law.score, x, **bad), lambda: ode_sample(sde, law.score, x, **bad),
                 lambda: ode_bpd(sde, law.score, x, 17, **bad), lambda: ode_nll(sde, law.score, x, **bad)):
        with pytest.raises(ValueError, match=f"{name}="):
            call()


# --- the final denoising step ---------------------------------------------------------------------
# score_sde's ODE sampler (sampling.py, get_ode_sampler with denoise = config.sampling.noise_removal,
# True in every config) ends with its reverse-diffusion predictor at t = eps without the noise:
# x - f + G^2 s(x, eps), (f, G) the SDE's discretization step i = floor(eps (N - 1)) = 0. The
# expected values below are written from the formulas (Song et al. 2021, eqs. 45-47 and the
# Euler-Maruyama step of sub-VP), not from ddpm.score.sde's discretize.
T_DISCRETE = 1000
DISCRETE = sde_from_diffusion(type("Diffusion", (), {"betas": get_beta_schedule("linear", T_DISCRETE)})())
DENOISE_CASES = {"vp": (SDES["vp"], 1e-3), "subvp": (SDES["subvp"], 1e-3), "ve": (SDES["ve"], 1e-5),
                 "ddpm": (DISCRETE, 1.0 / T_DISCRETE)}


def reverse_diffusion_mean(kind: str, x: torch.Tensor, s: torch.Tensor, eps: float) -> torch.Tensor:
    """x - f + G^2 s at step 0 of each SDE's own chain, from the formulas."""
    if kind == "ve":  # NCSN's chain: f = 0, G^2 = sigma_0^2 - sigma_{-1}^2 = sigma_min^2
        return x + SIGMA_MIN**2 * s
    if kind in ("vp", "ddpm"):  # DDPM's step with the first beta: f = (sqrt(1 - beta_0) - 1) x, G^2 = beta_0
        beta0 = BETA_MIN / 1000 if kind == "vp" else float(get_beta_schedule("linear", T_DISCRETE)[0])
        return x - (math.sqrt(1 - beta0) - 1) * x + beta0 * s
    # sub-VP: Euler-Maruyama of size 1 / N, f = -beta(eps) x / (2 N), G^2 = g(eps)^2 / N.
    beta = BETA_MIN + eps * (BETA_MAX - BETA_MIN)
    g2 = beta * (1 - math.exp(-2 * BETA_MIN * eps - (BETA_MAX - BETA_MIN) * eps**2))
    return x + 0.5 * beta * x / 1000 + g2 / 1000 * s


@pytest.mark.parametrize("kind", list(DENOISE_CASES))
def test_ode_sample_ends_with_one_noise_free_reverse_diffusion_step_by_default(kind):
    sde, eps = DENOISE_CASES[kind]
    law = gaussian("vp" if kind == "ddpm" else kind, 3)  # any smooth score will do for the step itself
    noise = sde.prior_sampling((5, 3), generators(1, "sample", range(5)), dtype=torch.float64)
    x, plain_nfe, plain_calls = counted_ode_sample(sde, law.score, noise.clone(), eps=eps, denoise=False)
    out, nfe, calls = counted_ode_sample(sde, law.score, noise.clone(), eps=eps)  # the default: denoised
    expected = reverse_diffusion_mean(kind, x, law.score(x, torch.full((5,), eps, dtype=torch.float64)), eps)
    # Both in float64: the step's own rounding, a few ulps of max|x|.
    torch.testing.assert_close(out, expected, rtol=0, atol=64 * 2.0**-53 * x.abs().max().item())
    assert (out - x).abs().max() > 1e-6  # the step moves the sample: the check above has power
    assert torch.equal(nfe, plain_nfe + 1) and calls == plain_calls + 1


@pytest.mark.parametrize("kind", ["ve", "ddpm"])
def test_denoised_ode_samples_of_gaussian_data_are_the_posterior_mean(kind):
    """Data N(m, v I) narrower than a grey level: at time eps, x = a x0 + std z, and E[x0 | x] =
    m + a v (x - a m) / (a^2 v + std^2) in closed form (Gaussian conditioning). The ODE's x(eps)
    misses it by most of the noise std(eps) = 0.01; the denoised sample meets it up to the known
    distance of the reference's step from this mean:
    VE's step takes sigma_min^2 for sigma(eps)^2, |x - E| = (sigma(eps)^2 - sigma_min^2) |s|; the
    discrete VP-type SDE at its first knot has a^2 = 1 - beta_0, std^2 = beta_0, and the step's
    ((2 - a) x + beta_0 s) differs from E = (x + beta_0 s) / a by |x| (1 - a)^2 / a + beta_0 |s| (1 / a - 1)."""
    sde, eps = DENOISE_CASES[kind]
    m, v = 0.3, 0.002**2  # a quarter of an 8-bit grey level (2 / 255 in [-1, 1]) wide
    if kind == "ve":
        a, std2 = 1.0, (SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** eps) ** 2
    else:
        beta0 = float(get_beta_schedule("linear", T_DISCRETE)[0])
        a, std2 = math.sqrt(1 - beta0), beta0

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # the exact score of the perturbed data
        tb = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        mean, sd = sde.mean_coef(tb)[:, None], sde.marginal_std(tb)[:, None]
        return -(x - mean * m) / (mean**2 * v + sd**2)

    n = 64
    noise = sde.prior_sampling((n, 2), generators(2, "sample", range(n)), dtype=torch.float64)
    # The closed form is a function of x(eps) itself, so the solver's own error does not enter.
    x = ode_sample(sde, score, noise.clone(), eps=eps, denoise=False)
    denoised = ode_sample(sde, score, noise.clone(), eps=eps)
    posterior_mean = m + a * v * (x - a * m) / (a**2 * v + std2)
    s = -(x - a * m) / (a**2 * v + std2)
    if kind == "ve":
        bound = (std2 - SIGMA_MIN**2) * s.abs()
    else:
        bound = x.abs() * (1 - a) ** 2 / a + beta0 * s.abs() * (1 / a - 1)
    bound = bound + 64 * 2.0**-53 * x.abs().max()  # float64 rounding
    assert ((denoised - posterior_mean).abs() <= bound).all()
    # Without the step the samples keep the noise: on average more than half a grey level (1 / 255)
    # off the mean, E|x - E| = sqrt(2 / pi) std^2 / sqrt(a^2 v + std^2) = 0.0078 here.
    assert (x - posterior_mean).abs().mean() > 1 / 255 > 100 * bound.max()
