"""Noise-conditional score networks: NCSN (Song & Ermon 2019) and NCSNv2 (Song & Ermon 2020).

A geometric ladder of noise levels sigma_1 > ... > sigma_L (``sigma_ladder``), the
noise-conditional denoising score matching objective over it
(``NoiseConditionalScoreMatching``), annealed Langevin dynamics (``ald_sample``), and NCSNv2's
techniques that derive sigma_1 (T1), the number of levels (T2) and the Langevin step size (T4)
from the training data (``ncsnv2_settings``).

Index convention (stated once): level ``i`` in ``0..L-1`` is the paper's sigma_{i+1}, so level
0 is the LARGEST noise, as in the references; this is the reverse of DDPM's timesteps, where
t = 0 is the least noise. A network is one of the project's eps networks ``model(x, level)``:
it predicts the noise z of x_tilde = x0 + sigma_i z, i.e. -sigma_i times the score, and the
score is s = -model / sigma_i (NCSNv2's s = net / sigma, with the sign inside the network).

Data scaling: this project's [-1, 1] (images x = 2 v / (K - 1) - 1). The references work in
[0, 1], where the same data have half these distances: their sigmas (CIFAR-10's sigma_1 = 50,
sigma_L = 0.01) describe twice the relative noise that the same numbers describe here, and
their Langevin start U[0, 1] is U[-1, 1] here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from ddpm.diffusion import Model, extract
from ddpm.likelihood import mean_flat
from ddpm.seeding import Generator, randn

# A level-indexed score: score(x, level) with level a LongTensor [B] in 0..L-1.
LevelScore = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Init = Literal["uniform", "gaussian"]

# Rows of a block of the pairwise-distance walk: two [rows, D] float64 blocks and their
# [rows, rows] distances (2048 x 3072 images: about 130 MB together).
_BLOCK_ROWS = 2048


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_range(sigma_max: Any, sigma_min: Any) -> tuple[float, float]:
    hi, lo = check_positive("sigma_max", sigma_max), check_positive("sigma_min", sigma_min)
    if not hi > lo:
        raise ValueError(f"sigma_max must exceed sigma_min, got sigma_max={hi!r}, sigma_min={lo!r}")
    return hi, lo


def sigma_ladder(sigma_max: float, sigma_min: float, num_levels: int) -> torch.Tensor:
    """NCSN's noise levels: float64 [L], geometric and descending from ``sigma_max`` (level 0,
    the paper's sigma_1) to ``sigma_min`` (level L-1), both ends exact.

    The same ladder as ``VESDE.discrete_sigmas``, in the opposite order.
    """
    hi, lo = _check_range(sigma_max, sigma_min)
    num_levels = check_int("num_levels", num_levels, 2)
    sigmas = torch.linspace(math.log(hi), math.log(lo), num_levels, dtype=torch.float64).exp()
    sigmas[0], sigmas[-1] = hi, lo
    return sigmas


def checked_sigmas(sigmas: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """``sigmas`` as float64 on the CPU, after refusing ladders that are not positive and
    strictly descending (level 0 is the largest noise)."""
    s = torch.as_tensor(sigmas).detach().to("cpu", torch.float64)
    if s.ndim != 1 or s.numel() < 1:
        raise ValueError(f"sigmas must be a 1-D tensor with at least one level, got shape {tuple(s.shape)}")
    if not bool((torch.isfinite(s) & (s > 0)).all()) or not bool((s[1:] < s[:-1]).all()):
        raise ValueError(f"sigmas must be finite, > 0 and strictly descending (level 0 the largest), got {s.tolist()}")
    return s


# ---------------------------------------------------------------- NCSNv2's techniques


def max_pairwise_distance(data: torch.Tensor | np.ndarray, block_rows: int = _BLOCK_ROWS) -> float:
    """The largest Euclidean distance between two examples of ``data`` [N, ...] (NCSNv2's
    technique 1 sets sigma_1 to it), over all N (N - 1) / 2 pairs, on ``data``'s device.

    Pass the data in the scaling the model sees (model space, not grey levels). The walk covers
    the upper triangle in [block_rows, block_rows] float64 blocks, converting each block from
    the data's dtype as it goes, so 50,000 CIFAR-10 images never need a float64 copy. Blocks
    use |a|^2 + |b|^2 - 2 a.b (one matrix product); the winning pair's distance is then
    recomputed from its difference, so the result is exact to rounding for that pair, and a
    pair can lose to another only within the product's rounding (~1e-16 of |a|^2 + |b|^2).
    """
    block_rows = check_int("block_rows", block_rows, 1)
    x = torch.as_tensor(data)
    if x.ndim < 2 or len(x) < 2:
        raise ValueError(f"data must hold at least 2 examples as [N, ...], got shape {tuple(x.shape)}")
    x = x.reshape(len(x), -1)
    starts = range(0, len(x), block_rows)
    blocks = [slice(i, i + block_rows) for i in starts]
    norms = torch.cat([x[b].to(torch.float64).square().sum(dim=1) for b in blocks])
    if not bool(torch.isfinite(norms).all()):
        raise ValueError("data contains NaN or infinite values")
    best, pair = -math.inf, (0, 1)
    for k, rows in enumerate(blocks):
        a = x[rows].to(torch.float64)
        for cols in blocks[k:]:
            b = x[cols].to(torch.float64)
            squared = norms[rows, None] + norms[None, cols] - 2 * a @ b.T
            flat = int(squared.argmax())
            value = squared.reshape(-1)[flat].item()
            if value > best:
                best, pair = value, (rows.start + flat // len(b), cols.start + flat % len(b))
    return (x[pair[0]].to(torch.float64) - x[pair[1]].to(torch.float64)).norm().item()


def _normal_cdf(z: float) -> float:
    """Phi(z) through erfc, accurate in both tails."""
    return 0.5 * math.erfc(-z / math.sqrt(2))


def level_ratio_criterion(gamma: float, dim: int) -> float:
    """NCSNv2's technique 2: Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma).

    For x ~ N(0, sigma_i^2 I) in D dimensions, |x| is about N(sqrt(D) sigma_i, sigma_i^2 / 2);
    this is the probability that |x| lies in the +-3-standard-deviation shell of the next larger
    level sigma_{i-1} = gamma sigma_i, i.e. how much adjacent levels overlap. The paper asks for
    about 0.5. Computed as a difference of upper tails when both arguments are positive, so it
    keeps its precision when both Phi are near 1.
    """
    gamma = check_positive("gamma", gamma)
    dim = check_int("dim", dim, 1)
    centre = math.sqrt(2 * dim) * (gamma - 1)
    lo, hi = centre - 3 * gamma, centre + 3 * gamma
    if lo > 0:
        return _normal_cdf(-lo) - _normal_cdf(-hi)
    return _normal_cdf(hi) - _normal_cdf(lo)


def num_levels_for(sigma_max: float, sigma_min: float, dim: int, target: float = 0.5) -> int:
    """The number of geometric levels L from ``sigma_max`` to ``sigma_min`` whose ratio
    gamma = (sigma_max / sigma_min)^(1 / (L - 1)) brings ``level_ratio_criterion`` closest to
    ``target`` (NCSNv2's technique 2).

    The criterion starts at Phi(3) - Phi(-3) at gamma = 1, peaks just above it, then falls
    monotonically to 0 when sqrt(2D) > 3; so the gamma that meets ``target`` is unique, and the
    best L is one of the two integers around the L that gamma implies. For D <= 4 the criterion
    never falls below Phi(3) - Phi(-3): the approximation of |x| by a narrow shell fails, and the
    technique gives no number of levels.

    For CIFAR-10 (D = 3072, 50 -> 0.01) this rule gives 219 levels (criterion 0.499). The
    paper uses 232 levels, whose ratio 5000^(1/231) gives 0.567: the paper asks for the
    criterion to be only about 0.5 and does not say how it rounded. Its choice lies on the side
    of more levels, i.e. more overlap between adjacent levels, which the technique's aim (each
    level's samples start in the typical set of the next) tolerates at the cost of sampling time.
    """
    hi, lo = _check_range(sigma_max, sigma_min)
    dim = check_int("dim", dim, 1)
    at_one = level_ratio_criterion(1.0, dim)
    if not 0 < target < at_one:
        raise ValueError(f"target must lie in (0, {at_one:.6f}) (the criterion at gamma = 1), got {target!r}")
    if 2 * dim <= 9:
        raise ValueError(
            f"NCSNv2's level-ratio criterion never falls to {target} for dim={dim}: it needs dim >= 5, "
            "where |x| concentrates on a shell; choose the number of levels explicitly"
        )
    excess = lambda gamma: level_ratio_criterion(gamma, dim) - target
    upper = 2.0
    while excess(upper) > 0:
        upper *= 2
    from scipy.optimize import brentq  # imported when used: its start-up (benchmarks/README.md)

    gamma = brentq(excess, 1.0, upper, xtol=1e-15, rtol=4 * np.finfo(float).eps)
    log_ratio = math.log(hi / lo)
    exact = 1 + log_ratio / math.log(gamma)
    candidates = {max(2, math.floor(exact)), max(2, math.ceil(exact))}
    distance = lambda n: abs(level_ratio_criterion(math.exp(log_ratio / (n - 1)), dim) - target)
    return min(sorted(candidates), key=distance)


def _step_size_criterion(u: np.ndarray | float, gamma: float, steps_per_level: int) -> np.ndarray | float:
    """NCSNv2's technique 4 expression as a function of u = eps / sigma_L^2:
    (1 - u)^{2T} (gamma^2 - 2 eps / (sigma_L^2 - sigma_L^2 (1 - u)^2)) + 2 eps / (...),
    where 2 eps / (sigma_L^2 - sigma_L^2 (1 - u)^2) = 2 u / (u (2 - u)) = 2 / (2 - u)."""
    tail = 2 / (2 - u)
    return (1 - u) ** (2 * steps_per_level) * (gamma**2 - tail) + tail


def langevin_step_size(sigma_min: float, gamma: float, steps_per_level: int) -> float:
    """NCSNv2's technique 4: the step size eps (ALD's ``step_lr``) that brings the paper's
    expression closest to 1, for T = ``steps_per_level`` steps per level and level ratio gamma.

    For a one-point dataset the level is N(0, sigma_L^2 I); a chain started from the previous
    level, N(0, gamma^2 sigma_L^2 I), has after T steps x <- x + eps s + sqrt(2 eps) z the
    variance sigma_L^2 times the expression, so 1 means it has reached its level. The
    expression depends on eps only through u = eps / sigma_L^2, which ALD's alpha_i / sigma_i^2
    makes the same at every level. The search runs over u in (0, 1) (a step at most sigma_L^2):
    a log-spaced grid finds the basin of |expression - 1|, which bounded Brent then refines.
    """
    sigma_min = check_positive("sigma_min", sigma_min)
    gamma = check_positive("gamma", gamma)
    steps = check_int("steps_per_level", steps_per_level, 1)
    if gamma < 1:
        raise ValueError(f"gamma is sigma_(i-1) / sigma_i of a descending ladder and must be >= 1, got {gamma!r}")
    gap = lambda u: abs(_step_size_criterion(u, gamma, steps) - 1)
    grid = np.logspace(-12, 0, 24001)[:-1]
    k = int(np.argmin(gap(grid)))
    bracket = (grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)])
    # xatol: a quadratic minimum is located only to about sqrt(machine epsilon) in float64.
    from scipy.optimize import minimize_scalar

    u = minimize_scalar(gap, bounds=bracket, method="bounded", options={"xatol": 1e-9}).x
    return float(u) * sigma_min**2


def langevin_snr(step_lr: float, sigma_min: float) -> float:
    """The signal-to-noise ratio of score_sde's Langevin corrector that runs the same steps as
    ALD: its step 2 snr^2 sigma_i^2 equals ALD's eps sigma_i^2 / sigma_L^2, so
    snr = sqrt(eps / (2 sigma_L^2))."""
    step_lr, sigma_min = check_positive("step_lr", step_lr), check_positive("sigma_min", sigma_min)
    return math.sqrt(step_lr / (2 * sigma_min**2))


def ncsnv2_settings(train_data: torch.Tensor | np.ndarray, dim: int | None = None, sigma_min: float = 0.01,
                    steps_per_level: int = 5, num_levels: int | None = None, target: float = 0.5
                    ) -> dict[str, float | int]:
    """NCSNv2's data-derived sampling settings: ``sigma_max`` = the largest pairwise distance of
    ``train_data`` (T1, in the data's scaling), ``num_levels`` from the level-ratio criterion
    (T2; or the given ``num_levels``), the ratio ``gamma`` of the resulting ladder, and
    ``step_lr`` for ``steps_per_level`` Langevin steps per level (T4).

    ``dim`` defaults to the size of one example and must equal it when given. Data with
    dim <= 4 (the Swiss roll) have no T2 answer (``num_levels_for``): pass ``num_levels``.
    """
    data = torch.as_tensor(train_data)
    size = int(data[0].numel()) if data.ndim >= 2 else 0
    if dim is None:
        dim = size
    elif dim != size:
        raise ValueError(f"dim={dim!r} differs from the size of one example of train_data ({size})")
    sigma_max = max_pairwise_distance(data)
    if not sigma_max > sigma_min:
        raise ValueError(
            f"the largest pairwise distance of train_data, {sigma_max!r}, is not above sigma_min={sigma_min!r}"
        )
    if num_levels is None:
        num_levels = num_levels_for(sigma_max, sigma_min, dim, target)
    num_levels = check_int("num_levels", num_levels, 2)
    gamma = (sigma_max / sigma_min) ** (1 / (num_levels - 1))
    return {"sigma_max": sigma_max, "num_levels": num_levels, "gamma": gamma,
            "step_lr": langevin_step_size(sigma_min, gamma, steps_per_level)}


# ---------------------------------------------------------------- objective and score


class NoiseConditionalScoreMatching:
    """NCSN's noise-conditional denoising score matching over the levels ``sigmas`` (float64
    [L], descending; level 0 the largest), with NCSN's weighting lambda(sigma) = sigma^2
    (``anneal_power`` 2).

    With x_tilde = x0 + sigma_i z and the score s = -model(x_tilde, i) / sigma_i, the loss

        lambda(sigma_i) 1/2 |s + z / sigma_i|^2 = 1/2 |z - model(x_tilde, i)|^2

    is half DDPM's simple loss. It is averaged over dimensions, like the project's DDPM loss
    (``mean_flat``): the references sum over dimensions, which scales the loss, and with it the
    gradient clipping threshold and Adam's epsilon, by D, so settings would not carry over
    between the 2-D Swiss roll and images.
    """

    def __init__(self, sigmas: torch.Tensor | Sequence[float]) -> None:
        self.sigmas = checked_sigmas(sigmas)

    @property
    def num_timesteps(self) -> int:
        """The number of levels L (the name the training loop reads for its draws of t)."""
        return len(self.sigmas)

    def draw_timesteps(self, batch: int, generator: Generator = None, device: torch.device | str = "cpu"
                       ) -> torch.Tensor:
        """Level indices uniform on 0..L-1, LongTensor [batch]; with one generator per example,
        example b's level comes from ``generator[b]`` alone."""
        L = self.num_timesteps
        if generator is None or isinstance(generator, torch.Generator):
            return torch.randint(0, L, (batch,), generator=generator, device=device)
        if len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch}")
        return torch.stack([torch.randint(0, L, (), generator=g, device=device) for g in generator])

    def training_losses(self, model: Model, x0: torch.Tensor, t: torch.Tensor | None = None,
                        noise: torch.Tensor | None = None, generator: Generator = None) -> dict[str, torch.Tensor]:
        """Per-example losses ``{"loss": [B]}``, unreduced. ``t`` (LongTensor [B], level
        indices) and ``noise`` (z, shaped like x0) are drawn when omitted."""
        if t is None:
            t = self.draw_timesteps(x0.shape[0], generator, x0.device)
        if noise is None:
            noise = randn(x0.shape, generator, x0.device, x0.dtype)
        sigma = extract(self.sigmas.to(x0.device), t, x0.shape, x0.dtype)
        eps_hat = model(x0 + sigma * noise, t).to(x0.dtype)
        return {"loss": 0.5 * mean_flat((eps_hat - noise) ** 2)}


def score_from_ncsn(sigmas: torch.Tensor | Sequence[float], model: Model) -> LevelScore:
    """The level-indexed score of an NCSN network: score(x, level) = -model(x, level) / sigma_level,
    with ``level`` a LongTensor [B] in 0..L-1 (0 the largest sigma)."""
    table = checked_sigmas(sigmas)

    def score(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        sigma = extract(table.to(x.device), level, x.shape, x.dtype)
        return -model(x, level).to(x.dtype) / sigma

    return score


