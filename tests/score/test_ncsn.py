"""NCSN / NCSNv2 (ddpm/score/ncsn.py): the sigma ladder, NCSNv2's techniques against the numbers the
NCSNv2 paper gives for CIFAR-10, the noise-conditional objective against a direct computation
and its closed-form minimum, and annealed Langevin dynamics driven by exact scores against the
law it should reproduce."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import chisquare, norm

from ddpm.metrics import energy_distance
from ddpm.sampling.ald import ald_sample
from ddpm.sampling.contract import CountingScore, StateRecorder
from ddpm.score.ncsn import (
    NoiseConditionalScoreMatching,
    langevin_snr,
    langevin_step_size,
    level_ratio_criterion,
    max_pairwise_distance,
    ncsnv2_settings,
    num_levels_for,
    score_from_ncsn,
    sigma_ladder,
)

F64 = torch.float64
# NCSNv2 on CIFAR-10 (configs/cifar10.yml): sigma 50 -> 0.01 over 232 levels, T = 5, eps = 6.2e-6.
CIFAR_DIM, CIFAR_GAMMA = 3 * 32 * 32, 5000 ** (1 / 231)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- ladder and techniques


def test_sigma_ladder_is_geometric_descending_with_exact_ends():
    sigmas = sigma_ladder(50.0, 0.01, 232)
    assert sigmas.dtype == F64 and sigmas.shape == (232,)
    assert sigmas[0].item() == 50.0 and sigmas[-1].item() == 0.01
    np.testing.assert_allclose(sigmas.numpy(), np.geomspace(50.0, 0.01, 232), rtol=1e-13)
    ratios = (sigmas[:-1] / sigmas[1:]).numpy()
    np.testing.assert_allclose(ratios, CIFAR_GAMMA, rtol=1e-13)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.01, 50.0, 10), "sigma_max must exceed sigma_min"),
        ((1.0, 1.0, 10), "sigma_max must exceed sigma_min"),
        ((1.0, 0.0, 10), "sigma_min must be a finite number > 0"),
        ((math.inf, 0.01, 10), "sigma_max must be a finite number > 0"),
        ((1.0, 0.01, 1), "num_levels must be an integer >= 2"),
        ((1.0, 0.01, 2.5), "num_levels must be an integer >= 2"),
    ],
)
def test_sigma_ladder_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        sigma_ladder(*args)


@pytest.mark.parametrize("block_rows", [7, 2048])
def test_max_pairwise_distance_equals_brute_force(block_rows):
    """57 points in blocks of 7 cross block edges and the diagonal blocks; 2048 is one block."""
    data = torch.randn(57, 5, generator=gen(0), dtype=F64) * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0], dtype=F64)
    expected = pdist(data.numpy()).max()
    assert max_pairwise_distance(data, block_rows=block_rows) == pytest.approx(expected, rel=1e-13)
    images = torch.rand(40, 1, 4, 4, generator=gen(1)) * 2 - 1  # float32 [N, C, H, W]: flattened per example
    expected = pdist(images.reshape(40, -1).double().numpy()).max()
    assert max_pairwise_distance(images.numpy(), block_rows=block_rows) == pytest.approx(expected, rel=1e-13)


def test_max_pairwise_distance_rejects_bad_data():
    with pytest.raises(ValueError, match="at least 2 examples"):
        max_pairwise_distance(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="NaN or infinite"):
        max_pairwise_distance(torch.tensor([[0.0, 1.0], [math.nan, 0.0]]))


def _criterion_scipy(gamma: float, dim: int) -> float:
    centre = math.sqrt(2 * dim) * (gamma - 1)
    return norm.sf(centre - 3 * gamma) - norm.sf(centre + 3 * gamma)


def test_level_ratio_criterion_gives_the_papers_057_for_cifar10():
    value = level_ratio_criterion(CIFAR_GAMMA, CIFAR_DIM)
    assert round(value, 2) == 0.57  # the NCSNv2 paper's figure for gamma = 5000^(1/231)
    for gamma, dim in [(CIFAR_GAMMA, CIFAR_DIM), (1.0, 3), (1.36, 64), (1.5, 3072)]:  # the last: both Phi ~ 1
        assert level_ratio_criterion(gamma, dim) == pytest.approx(_criterion_scipy(gamma, dim), rel=1e-9, abs=1e-300)


def test_num_levels_for_cifar10_is_the_closest_ladder_and_the_papers_232_lies_above_it():
    levels = num_levels_for(50.0, 0.01, CIFAR_DIM)
    # Brute force over ladders with scipy's normal tails: the rule's answer is the argmin.
    candidates = np.arange(100, 400)
    gaps = [abs(_criterion_scipy(5000 ** (1 / (n - 1)), CIFAR_DIM) - 0.5) for n in candidates]
    assert levels == candidates[int(np.argmin(gaps))] == 219
    assert level_ratio_criterion(5000 ** (1 / 218), CIFAR_DIM) == pytest.approx(0.4986, abs=1e-4)
    # The paper's 232 levels overlap more (0.567): more levels than the rule, see num_levels_for.
    assert level_ratio_criterion(5000 ** (1 / 231), CIFAR_DIM) > level_ratio_criterion(5000 ** (1 / 218), CIFAR_DIM)


def test_num_levels_for_refuses_dimensions_without_a_shell_and_unreachable_targets():
    with pytest.raises(ValueError, match="dim=2: it needs dim >= 5"):
        num_levels_for(3.0, 0.01, 2)
    with pytest.raises(ValueError, match="target must lie in"):
        num_levels_for(50.0, 0.01, 64, target=0.999)


@pytest.mark.parametrize(("sigma_max", "sigma_min", "dim", "levels"), [
    (50.0, 0.01, 5, 4),     # the smallest dimension with a shell: 3 levels give ~0, 4 give 0.65
    (50.0, 0.01, 64, 29),   # 8x8 digits
    (10.0, 1.0, 5, 2),      # a range so narrow that 2 levels already overlap more than the target
])
def test_num_levels_for_is_the_ladder_whose_criterion_is_closest_to_a_half(sigma_max, sigma_min, dim, levels):
    """Technique 2 by brute force with scipy's normal tails: of the ladders of 2 .. 1000 levels
    from sigma_max to sigma_min, the one whose ratio brings the criterion closest to 0.5."""
    candidates = np.arange(2, 1001)
    gaps = [abs(_criterion_scipy((sigma_max / sigma_min) ** (1 / (n - 1)), dim) - 0.5) for n in candidates]
    assert num_levels_for(sigma_max, sigma_min, dim) == candidates[int(np.argmin(gaps))] == levels


def _variance_after_steps(eps: np.ndarray, sigma_min: float, gamma: float, steps: int) -> np.ndarray:
    """Var(x_T) / sigma_L^2 of T steps x <- x + eps s + sqrt(2 eps) z with the score of
    N(0, sigma_L^2), from x ~ N(0, gamma^2 sigma_L^2): the recursion behind technique 4."""
    var = np.full_like(eps, gamma**2 * sigma_min**2)
    for _ in range(steps):
        var = (1 - eps / sigma_min**2) ** 2 * var + 2 * eps
    return var / sigma_min**2


def test_langevin_step_size_gives_the_papers_6_2e_6_for_cifar10():
    eps = langevin_step_size(0.01, CIFAR_GAMMA, 5)
    assert f"{eps:.1e}" == "6.2e-06"  # the paper quotes two significant figures
    # The closed form minimised is the variance recursion: brute force over a fine grid of eps.
    grid = np.linspace(1e-7, 2e-5, 200_001)
    best = grid[np.argmin(np.abs(_variance_after_steps(grid, 0.01, CIFAR_GAMMA, 5) - 1))]
    assert abs(eps - best) <= grid[1] - grid[0]


def test_langevin_snr_matches_score_sde_for_ncsn_and_ncsnv2():
    assert round(langevin_snr(2e-5, 0.01), 3) == 0.316  # NCSN: eps = 2e-5, sigma_L = 0.01
    assert round(langevin_snr(6.2e-6, 0.01), 3) == 0.176  # NCSNv2 on CIFAR-10
    with pytest.raises(ValueError, match="step_lr must be a finite number > 0"):
        langevin_snr(0.0, 0.01)


def test_ncsnv2_settings_combine_the_techniques():
    data = torch.randn(120, 2, 2, 2, generator=gen(2), dtype=F64)  # D = 8
    settings = ncsnv2_settings(data, dim=8, sigma_min=0.05, steps_per_level=7)
    assert settings["sigma_max"] == pytest.approx(pdist(data.reshape(120, -1).numpy()).max(), rel=1e-13)
    assert settings["num_levels"] == num_levels_for(settings["sigma_max"], 0.05, 8)
    ladder = sigma_ladder(settings["sigma_max"], 0.05, settings["num_levels"])
    assert settings["gamma"] == pytest.approx((ladder[0] / ladder[1]).item(), rel=1e-12)
    assert settings["step_lr"] == langevin_step_size(0.05, settings["gamma"], 7)
    assert ncsnv2_settings(data, sigma_min=0.05, steps_per_level=7) == settings  # dim defaults to 8


def test_ncsnv2_settings_need_num_levels_in_two_dimensions():
    points = torch.randn(50, 2, generator=gen(3), dtype=F64)
    with pytest.raises(ValueError, match="choose the number of levels explicitly"):
        ncsnv2_settings(points)
    settings = ncsnv2_settings(points, num_levels=10)
    assert settings["num_levels"] == 10
    assert settings["gamma"] ** 9 == pytest.approx(settings["sigma_max"] / 0.01, rel=1e-12)
    with pytest.raises(ValueError, match="dim=3 differs from the size of one example"):
        ncsnv2_settings(points, dim=3)


# ---------------------------------------------------------------- objective and score


def test_objective_equals_a_direct_computation():
    obj = NoiseConditionalScoreMatching(sigma_ladder(1.0, 0.01, 10))
    x0 = torch.randn(6, 2, 3, 3, generator=gen(4), dtype=F64)
    noise = torch.randn(6, 2, 3, 3, generator=gen(5), dtype=F64)
    t = torch.tensor([0, 9, 3, 3, 5, 1])
    model = lambda x, level: torch.tanh(x) * (level.to(F64) + 1).reshape(-1, 1, 1, 1) / 7
    loss = obj.training_losses(model, x0, t=t, noise=noise)["loss"]
    assert loss.shape == (6,) and loss.dtype == F64
    for b in range(6):
        sigma = 0.01 ** (t[b].item() / 9)  # level i of 1 -> 0.01 over 10 levels
        x_tilde = x0[b] + sigma * noise[b]
        score = -model(x_tilde[None], t[b:b + 1])[0] / sigma
        expected = sigma**2 * 0.5 * (score + noise[b] / sigma).square().mean()
        assert loss[b].item() == pytest.approx(expected.item(), rel=1e-12)


def test_objective_with_the_exact_score_of_gaussian_data_attains_its_minimum():
    """Data N(m, s^2 I): the perturbed law is N(m, (s^2 + sigma^2) I), whose score makes
    eps* = sigma (x_tilde - m) / (s^2 + sigma^2). Then z - eps* has variance s^2 / (s^2 + sigma^2)
    per dimension and is orthogonal to eps*, so a model c eps* has expected loss
    1/2 (s^2 + (c - 1)^2 sigma^2) / (s^2 + sigma^2), least at c = 1."""
    sigmas = sigma_ladder(2.0, 0.05, 8)
    obj = NoiseConditionalScoreMatching(sigmas)
    m, s, n = torch.tensor([0.3, -0.2, 0.5, 0.0], dtype=F64), 0.4, 40_000
    x0 = m + s * torch.randn(n, 4, generator=gen(6), dtype=F64)
    t = obj.draw_timesteps(n, gen(7))
    var = s**2 + sigmas[t] ** 2
    for c in (1.0, 1.3):
        model = lambda x, level, c=c: c * sigmas[level, None] * (x - m) / (s**2 + sigmas[level, None] ** 2)
        loss = obj.training_losses(model, x0, t=t, generator=gen(8))["loss"]
        residual = loss - 0.5 * (s**2 + (c - 1) ** 2 * sigmas[t] ** 2) / var
        se = residual.std().item() / math.sqrt(n)
        assert abs(residual.mean().item()) < 4 * se, (c, residual.mean().item(), se)


def test_draw_timesteps_is_uniform_and_per_example():
    obj = NoiseConditionalScoreMatching(sigma_ladder(1.0, 0.01, 7))
    t = obj.draw_timesteps(7000, gen(9))
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 6
    assert chisquare(torch.bincount(t, minlength=7).numpy()).pvalue > 1e-3
    gens = [gen(100 + b) for b in range(5)]
    batch = obj.draw_timesteps(5, gens)
    alone = torch.cat([obj.draw_timesteps(1, [gen(100 + b)]) for b in range(5)])
    assert torch.equal(batch, alone)


def test_score_from_ncsn_divides_the_network_by_minus_sigma():
    sigmas = sigma_ladder(3.0, 0.1, 4)
    model = lambda x, level: x * 2 + level.to(x.dtype)[:, None]
    x = torch.randn(4, 3, generator=gen(10), dtype=F64)
    level = torch.tensor([0, 1, 2, 3])
    expected = -(2 * x + level[:, None].to(F64)) / torch.tensor(np.geomspace(3.0, 0.1, 4))[:, None]
    torch.testing.assert_close(score_from_ncsn(sigmas, model)(x, level), expected, rtol=1e-14, atol=0)


# ---------------------------------------------------------------- annealed Langevin dynamics


def gaussian_score(mean: torch.Tensor, s: float, sigmas: torch.Tensor):
    """The exact score of N(mean, s^2 I) perturbed at level i: -(x - mean) / (s^2 + sigma_i^2)."""
    def score(x, level):
        return -(x - mean.to(x)) / (s**2 + sigmas.to(x)[level, None] ** 2)
    return score


def mixture_score(weights: torch.Tensor, means: torch.Tensor, s: float, sigmas: torch.Tensor):
    """The exact score of sum_k w_k N(mu_k, s^2 I) perturbed at level i, i.e. of
    sum_k w_k N(mu_k, (s^2 + sigma_i^2) I): the responsibilities' average of the components'
    scores (equal variances, so the normalisers cancel from the responsibilities)."""
    def score(x, level):
        var = s**2 + sigmas.to(x)[level] ** 2  # [B]
        diff = x[None] - means.to(x)[:, None, :]  # [K, B, D]: components first, reductions over dim 0
        logits = weights.to(x).log()[:, None] - 0.5 * diff.square().sum(-1) / var
        resp = logits.softmax(dim=0)[..., None]
        return -(resp * diff).sum(0) / var[:, None]
    return score


def draw_mixture(weights, means, s, n, g):
    component = torch.multinomial(weights, n, replacement=True, generator=g)
    return means[component] + s * torch.randn(n, means.shape[1], generator=g, dtype=F64)


def assert_same_law(samples: torch.Tensor, draw) -> float:
    """The energy distance of ``samples`` to an exact draw against the floor: the distance
    between two more independent exact draws. Both are unbiased U-statistics, equal in law
    when the samples follow the law; their difference has standard error
    sqrt(se_1^2 + se_2^2), each a jackknife error, which overstates the true one (Efron & Stein
    1981); 3 such errors bound it. Returns the margin for power checks."""
    n = len(samples)
    fit = energy_distance(samples, draw(n, 1))
    floor = energy_distance(draw(n, 2), draw(n, 3))
    margin = 3 * math.hypot(fit.stderr, floor.stderr)
    assert fit.value - floor.value < margin, (fit, floor, margin)
    return floor.value + margin


def ald_moments(mean: torch.Tensor, s: float, sigmas: np.ndarray, steps: int, step_lr: float):
    """The exact mean and variance per dimension of ALD's output for the linear score of
    N(mean, s^2 I), from U[-1, 1] (mean 0, variance 1/3): x <- (1 - a/v) x + (a/v) mean + sqrt(2a) z."""
    mu, var = torch.zeros_like(mean), 1 / 3
    for sigma in sigmas:
        a, v = step_lr * (sigma / sigmas[-1]) ** 2, s**2 + sigma**2
        for _ in range(steps):
            mu, var = (1 - a / v) * mu + a / v * mean, (1 - a / v) ** 2 * var + 2 * a
    k = s**2 / (s**2 + sigmas[-1] ** 2)  # the denoising step x + sigma_L^2 s(x)
    return k * mu + (1 - k) * mean, k**2 * var


def test_ald_with_the_exact_score_of_gaussian_data_reproduces_it(one_thread):
    """NCSN's settings (10 levels 1 -> 0.01, T = 100, eps = 2e-5) with NCSNv2's denoising, in
    float32 (the default). ALD's exact output moments (``ald_moments``) differ slightly from the
    data's: T = 100 steps per level leave part of the variance of the levels where sigma_i ~ s,
    which the sample moments must show; the energy distance checks the law itself."""
    mean, s, n = torch.tensor([0.3, -0.2, 0.1], dtype=F64), 0.2, 3000
    sigmas = sigma_ladder(1.0, 0.01, 10)
    score = CountingScore(gaussian_score(mean, s, sigmas))
    x = ald_sample(score, sigmas, (n, 3), generator=gen(11))
    assert score.calls == 10 * 100 + 1 and x.dtype == torch.float32
    mu, var = ald_moments(mean, s, np.geomspace(1.0, 0.01, 10), 100, 2e-5)
    for d in range(3):
        assert abs(x[:, d].double().mean() - mu[d]).item() < 4 * math.sqrt(var / n)
        assert abs(x[:, d].double().var().item() - var) < 4 * var * math.sqrt(2 / (n - 1))
    law = lambda k, seed, scale=s: mean + scale * torch.randn(k, 3, generator=gen(seed), dtype=F64)
    resolution = assert_same_law(x, law)
    # Power: a Gaussian 20 % too wide lies beyond the margin.
    assert energy_distance(law(n, 4, scale=1.2 * s), law(n, 1)).value > resolution


def test_ald_with_the_exact_score_of_a_gaussian_mixture_reproduces_its_weights(one_thread):
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    means = torch.tensor([[-0.5, -0.5], [0.5, -0.5], [0.0, 0.5]], dtype=F64)
    s, n = 0.1, 3000
    sigmas = sigma_ladder(1.0, 0.01, 10)
    x = ald_sample(mixture_score(weights, means, s, sigmas), sigmas, (n, 2), generator=gen(12))
    law = lambda k, seed: draw_mixture(weights, means, s, k, gen(seed))
    resolution = assert_same_law(x, law)
    # Power: mode weights off by 0.1 lie beyond the margin.
    wrong = draw_mixture(torch.tensor([0.3, 0.3, 0.4], dtype=F64), means, s, n, gen(13))
    assert energy_distance(wrong, law(n, 1)).value > resolution
    # Each mode's share (nearest mean; modes are >= 5 s from the midpoints) within 4 binomial errors.
    share = torch.bincount(torch.cdist(x.double(), means).argmin(dim=1), minlength=3).to(F64) / n
    assert ((share - weights).abs() < 4 * (weights * (1 - weights) / n).sqrt()).all(), share


def test_ald_follows_the_algorithm_step_by_step():
    """Three levels, two steps each, replayed with the same generator draws in the same order."""
    sigmas_np = np.geomspace(0.8, 0.05, 3)
    mean, s, step_lr = torch.tensor([0.1, -0.3], dtype=F64), 0.3, 1e-3
    for init in ("uniform", "gaussian"):
        score = CountingScore(gaussian_score(mean, s, torch.tensor(sigmas_np)))
        x = ald_sample(score, torch.tensor(sigmas_np), (5, 2), steps_per_level=2, step_lr=step_lr,
                       init=init, generator=gen(14), dtype=F64)
        g = gen(14)
        if init == "uniform":
            y = 2 * torch.rand(5, 2, generator=g, dtype=F64) - 1
        else:
            y = 0.8 * torch.randn(5, 2, generator=g, dtype=F64)
        for sigma in sigmas_np:
            alpha = step_lr * sigma**2 / 0.05**2
            for _ in range(2):
                z = torch.randn(5, 2, generator=g, dtype=F64)
                y = y - alpha * (y - mean) / (s**2 + sigma**2) + math.sqrt(2 * alpha) * z
        y = y - 0.05**2 * (y - mean) / (s**2 + 0.05**2)
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-15)
        assert score.calls == 7


def test_ald_sample_does_not_depend_on_its_batch():
    sigmas = sigma_ladder(1.0, 0.05, 4)
    score = gaussian_score(torch.tensor([0.2, 0.1]), 0.3, sigmas)
    kwargs = dict(steps_per_level=5, step_lr=1e-3)
    for init in ("uniform", "gaussian"):
        batch = ald_sample(score, sigmas, (4, 2), generator=[gen(200 + b) for b in range(4)], init=init, **kwargs)
        alone = ald_sample(score, sigmas, (1, 2), generator=[gen(202)], init=init, **kwargs)
        assert torch.equal(batch[2], alone[0])


def test_ald_reports_nfe_trajectory_and_progress():
    sigmas = sigma_ladder(1.0, 0.05, 4)
    exact = gaussian_score(torch.zeros(3), 0.5, sigmas)
    calls, score, traj = [], CountingScore(exact), StateRecorder()
    x = ald_sample(score, sigmas, (2, 3), steps_per_level=3, generator=gen(15), on_state=traj,
                   on_step=lambda done, total: calls.append((done, total)))
    assert score.calls == 13 and calls == [(k, 13) for k in range(1, 14)]
    assert traj.keys == [-1, 0, 1, 2, 3, 4] and traj.stacked().shape == (6, 2, 3)
    assert torch.equal(traj.states[-1], x) and traj.states[-1] is not x
    score, traj = CountingScore(exact), StateRecorder()
    x = ald_sample(score, sigmas, (2, 3), steps_per_level=3, denoise=False, generator=gen(15), states=[-1, 3],
                   on_state=traj)
    assert score.calls == 12 and traj.keys == [-1, 3]
    assert torch.equal(traj.states[-1], x)
    traj = StateRecorder()
    ald_sample(exact, sigmas, (2, 3), steps_per_level=1, generator=gen(15), states=[], on_state=traj)
    assert traj.keys == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(init="normal"), "init='normal' is not accepted; accepted: uniform, gaussian"),
        (dict(steps_per_level=0), "steps_per_level must be an integer >= 1"),
        (dict(step_lr=-1.0), "step_lr must be a finite number > 0"),
        (dict(sigmas=[0.01, 1.0]), "strictly descending"),
        (dict(states=[5]), r"trajectory levels \[5\] lie outside -1..4"),
    ],
)
def test_ald_rejects_bad_arguments(kwargs, match):
    sigmas = kwargs.pop("sigmas", sigma_ladder(1.0, 0.05, 4))
    with pytest.raises(ValueError, match=match):
        ald_sample(lambda x, level: -x, sigmas, (2, 3), **kwargs)
