"""Score-based SDEs (Song et al. 2021): the VP, sub-VP and VE SDEs, the VP-type SDE of a
discrete DDPM, score adapters for trained networks, and continuous-time denoising score matching.

Every SDE here is linear, dx = f(t) x dt + g(t) dw on t in [0, T = 1], so it is given by four
scalar functions of t: the drift coefficient f(t), the diffusion coefficient g(t), and the
mean coefficient and standard deviation of the perturbation kernel
p_t(x | x0) = N(mean_coef(t) x0, std(t)^2 I). Those are computed in float64 and cast to x's
dtype at the end (the discipline of ``ddpm.diffusion``). Continuous time t is a float tensor
[B] (a 0-d tensor or a float stands for the whole batch).

``discretize(x, t)`` gives (f, G) with x_{i+1} = x_i + f + G z (score_sde's convention); the
step index of t is i = floor(t (N - 1)), as in score_sde, which for t = (i + 1) / N is i.

A score is any callable ``score(x, t) -> tensor shaped like x``. ``score_from_diffusion``
makes one from a trained discrete eps / x0 / v network, ``score_from_eps_model`` from a
network trained in continuous time (``DenoisingScoreMatching``).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import numpy as np
import torch

from ddpm.diffusion import GaussianDiffusion, Model
from ddpm.likelihood import mean_flat
from ddpm.schedules import MAX_BETA
from ddpm.seeding import Generator, rand, randn

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Weighting = Literal["sigma2", "g2"]
TimeLike = torch.Tensor | float


def _as_float64(t: TimeLike, device: torch.device | None = None) -> torch.Tensor:
    # A Python float goes straight to float64 (torch.as_tensor would round it to float32 first).
    if isinstance(t, torch.Tensor):
        return t.to(device=device, dtype=torch.float64)
    return torch.tensor(t, dtype=torch.float64, device=device)


def _batch_time(t: TimeLike, x: torch.Tensor) -> torch.Tensor:
    """``t`` as float64 [B] on ``x``'s device (a scalar is broadcast over the batch)."""
    t = _as_float64(t, x.device)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape [{x.shape[0]}] (the batch), got {tuple(t.shape)}")
    return t


def _expand(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A float64 coefficient [B] cast to ``x``'s dtype and shaped to broadcast over ``x``."""
    return coef.to(x.dtype).reshape(x.shape[0], *([1] * (x.ndim - 1)))


def network_time_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of the timestep fed to a network: float32 (what our embeddings compute in),
    or float64 for float64 inputs (analytic models in tests)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class SDE(abc.ABC):
    """A linear SDE dx = f(t) x dt + g(t) dw on [0, T = 1] with perturbation kernel
    N(mean_coef(t) x0, marginal_std(t)^2 I) and prior N(0, prior_std^2 I).

    Subclasses give the four coefficient functions (float64 in, float64 out) and ``prior_std``;
    this class turns them into score_sde's interface.
    """

    T: float = 1.0
    prior_std: float = 1.0

    def __init__(self, N: int, sampling_eps: float) -> None:
        if isinstance(N, bool) or not isinstance(N, int) or N < 1:
            raise ValueError(f"N={N!r} must be an integer >= 1 (the steps of the discretization)")
        self.N = N
        self.sampling_eps = float(sampling_eps)
        self._device_tables: dict[tuple[str, torch.device], torch.Tensor] = {}

    # ---------------------------------------------------------------- coefficients (float64)
    @abc.abstractmethod
    def drift_coef(self, t: TimeLike) -> torch.Tensor:
        """f(t), with drift f(t) x."""

    @abc.abstractmethod
    def diffusion_coef(self, t: TimeLike) -> torch.Tensor:
        """g(t)."""

    @abc.abstractmethod
    def mean_coef(self, t: TimeLike) -> torch.Tensor:
        """The perturbation kernel's mean is mean_coef(t) x0."""

    @abc.abstractmethod
    def marginal_std(self, t: TimeLike) -> torch.Tensor:
        """The perturbation kernel's standard deviation."""

    # ---------------------------------------------------------------- score_sde's interface
    def sde(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(t) x [B, ...] and diffusion g(t) [B], in x's dtype."""
        t = _batch_time(t, x)
        return _expand(self.drift_coef(t), x) * x, self.diffusion_coef(t).to(x.dtype)

    def marginal_prob(self, x0: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [B, ...] and std [B] of p_t(x | x0), in x0's dtype."""
        t = _batch_time(t, x0)
        return _expand(self.mean_coef(t), x0) * x0, self.marginal_std(t).to(x0.dtype)

    def prior_sampling(self, shape: Sequence[int], generator: Generator = None,
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x(T) ~ N(0, prior_std^2 I); a list of generators draws example b from generator[b]."""
        return randn(shape, generator, device, dtype) * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) per example [B], in nats summed over dimensions (float64)."""
        z = z.to(torch.float64).reshape(z.shape[0], -1)
        D = z.shape[1]
        return -0.5 * D * math.log(2 * math.pi * self.prior_std**2) - 0.5 * z.square().sum(1) / self.prior_std**2

    def discretize(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, G) of one Euler-Maruyama step of size 1/N: x_{i+1} = x_i + f + G z, G [B]."""
        dt = self.T / self.N
        drift, g = self.sde(x, t)
        return drift * dt, g * math.sqrt(dt)

    def ode_drift(self, x: torch.Tensor, t: TimeLike, score: Score) -> torch.Tensor:
        """Probability-flow ODE dx/dt = f(t) x - g(t)^2 / 2 s(x, t) (Song et al. 2021, eq. 13)."""
        tb = _batch_time(t, x)
        drift, _ = self.sde(x, tb)
        half_g2 = 0.5 * self.diffusion_coef(tb).square()
        return drift - _expand(half_g2, x) * score(x, tb).to(x.dtype)

    def discrete_timestep(self, t: TimeLike) -> torch.Tensor:
        """The step index i = floor(t (N - 1)) of score_sde's discretizations, clamped to 0..N-1
        (for t = (i + 1) / N it is i)."""
        t = _as_float64(t)
        return (t * (self.N - 1)).floor().long().clamp(0, self.N - 1)

    def _on(self, name: str, device: torch.device) -> torch.Tensor:
        """The float64 table attribute ``name`` on ``device``, copied there once."""
        key = (name, device)
        if key not in self._device_tables:
            self._device_tables[key] = getattr(self, name).to(device)
        return self._device_tables[key]


class _LinearBetaSDE(SDE):
    """The drift -beta(t)/2 x of VP and sub-VP, beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float, beta_max: float, N: int) -> None:
        super().__init__(N, sampling_eps=1e-3)
        if not beta_min > 0:
            raise ValueError(f"beta_min={beta_min!r} must be > 0")
        if not beta_max > beta_min:
            raise ValueError(f"beta_max={beta_max!r} must be > beta_min={beta_min!r}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t: TimeLike) -> torch.Tensor:
        """beta(t) (float64)."""
        return self.beta_min + _as_float64(t) * (self.beta_max - self.beta_min)

    def log_mean_coef(self, t: TimeLike) -> torch.Tensor:
        """log mean_coef(t) = -1/2 int_0^t beta(s) ds (float64)."""
        t = _as_float64(t)
        return -0.25 * t.square() * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift_coef(self, t: TimeLike) -> torch.Tensor:
        return -0.5 * self.beta(t)

    def mean_coef(self, t: TimeLike) -> torch.Tensor:
        return self.log_mean_coef(t).exp()


class VPSDE(_LinearBetaSDE):
    """Variance preserving SDE: dx = -beta(t)/2 x dt + sqrt(beta(t)) dw, beta(t) = beta_min +
    t (beta_max - beta_min) (Song et al. 2021, eq. 11; DDPM's continuous limit).

    ``discrete_betas`` = linspace(beta_min / N, beta_max / N, N) (float64): with the defaults
    the project's ``linear`` schedule for T = 1000; ``alphas``, ``alphas_cumprod`` follow.
    ``discretize`` is DDPM's forward step with those betas. N must exceed beta_max so that
    every discrete beta is < 1.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> None:
        super().__init__(beta_min, beta_max, N)
        if not beta_max < N:
            raise ValueError(f"N={N} must be > beta_max={beta_max!r}: the discrete betas beta_max / N must be < 1")
        # The same linspace as ddpm.schedules' "linear", so the tables agree to the last bit.
        self._set_discrete_betas(torch.from_numpy(np.linspace(beta_min / N, beta_max / N, N, dtype=np.float64)))

    def _set_discrete_betas(self, betas: torch.Tensor) -> None:
        self.discrete_betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    def diffusion_coef(self, t: TimeLike) -> torch.Tensor:
        return self.beta(t).sqrt()

    def marginal_std(self, t: TimeLike) -> torch.Tensor:
        # sqrt(1 - abar(t)); expm1 keeps it accurate where abar is close to 1 (small t).
        return (-torch.expm1(2.0 * self.log_mean_coef(t))).sqrt()

    def discretize(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """DDPM's step x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z (Ho et al. eq. 2)."""
        t = _batch_time(t, x)
        i = self.discrete_timestep(t)
        beta = self._on("discrete_betas", x.device)[i]
        # sqrt(1 - beta) - 1 without the cancellation of a small beta.
        f = _expand(torch.expm1(0.5 * torch.log1p(-beta)), x) * x
        return f, beta.sqrt().to(x.dtype)


class SubVPSDE(_LinearBetaSDE):
    """sub-VP SDE: the VP drift with g(t)^2 = beta(t) (1 - exp(-2 int_0^t beta)), whose
    marginal variance (1 - abar(t))^2 stays below VP's (Song et al. 2021, eq. 14).
    ``discretize`` is Euler-Maruyama (as in score_sde)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> None:
        super().__init__(beta_min, beta_max, N)

    def diffusion_coef(self, t: TimeLike) -> torch.Tensor:
        # 4 log mean_coef = -2 int_0^t beta.
        discount = -torch.expm1(4.0 * self.log_mean_coef(t))
        return (self.beta(t) * discount).sqrt()

    def marginal_std(self, t: TimeLike) -> torch.Tensor:
        return -torch.expm1(2.0 * self.log_mean_coef(t))


class VESDE(SDE):
    """Variance exploding SDE: dx = sqrt(d sigma(t)^2 / dt) dw, sigma(t) = sigma_min
    (sigma_max / sigma_min)^t (Song et al. 2021, eq. 9; NCSN's continuous limit).

    As in score_sde, the kernel's std is sigma(t): the law of x(t) when x(0) ~ N(x0, sigma_min^2 I),
    i.e. data enter at the smallest noise level (started from x0 exactly the variance would be
    sigma(t)^2 - sigma_min^2). ``discrete_sigmas`` is NCSN's geometric ladder (ascending) and
    ``discretize`` NCSN's chain x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000) -> None:
        super().__init__(N, sampling_eps=1e-5)
        if not sigma_min > 0:
            raise ValueError(f"sigma_min={sigma_min!r} must be > 0")
        if not sigma_max > sigma_min:
            raise ValueError(f"sigma_max={sigma_max!r} must be > sigma_min={sigma_min!r}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.prior_std = self.sigma_max
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.discrete_sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), N, dtype=torch.float64).exp()

    def sigma(self, t: TimeLike) -> torch.Tensor:
        """sigma(t) (float64)."""
        return self.sigma_min * torch.exp(_as_float64(t) * self._log_ratio)

    def drift_coef(self, t: TimeLike) -> torch.Tensor:
        return torch.zeros_like(_as_float64(t))

    def diffusion_coef(self, t: TimeLike) -> torch.Tensor:
        return self.sigma(t) * math.sqrt(2.0 * self._log_ratio)

    def mean_coef(self, t: TimeLike) -> torch.Tensor:
        return torch.ones_like(_as_float64(t))

    def marginal_std(self, t: TimeLike) -> torch.Tensor:
        return self.sigma(t)

    def discretize(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """NCSN's chain: f = 0, G = sqrt(sigma_i^2 - sigma_{i-1}^2) (sigma_{-1} = 0)."""
        t = _batch_time(t, x)
        i = self.discrete_timestep(t)
        sigmas = self._on("discrete_sigmas", x.device)
        previous = torch.where(i == 0, torch.zeros_like(sigmas[i]), sigmas[(i - 1).clamp(min=0)])
        return torch.zeros_like(x), (sigmas[i].square() - previous.square()).sqrt().to(x.dtype)


class DiscreteVPSDE(VPSDE):
    """The VP-type SDE of a discrete diffusion with betas beta_0..beta_{T-1} (code index).

    log abar(t) is piecewise linear through the knots (0, 0) and ((i + 1) / T, log abar_i), so
    beta(t) = -d log abar / dt = -T log(1 - beta_i) on [i / T, (i + 1) / T): the marginals at the
    knots are the diffusion's, x(t) | x0 ~ N(sqrt(abar(t)) x0, (1 - abar(t)) I), and
    ``discretize`` is DDPM's step with the diffusion's betas (N = T). A beta of 1 (the jsd
    schedule's last, where abar_T = 0) would make beta(t) infinite on the last interval, so a
    beta above ``ddpm.schedules.MAX_BETA`` (Nichol & Dhariwal's cap) is capped there: every
    coefficient stays finite, abar(1) = (1 - MAX_BETA) abar_{T-2} instead of 0, and the prior
    N(0, I) is then off from the t = 1 marginal by that much. ``sampling_eps`` = 1 / T, the
    first knot (the smallest noise level the network was trained at).
    """

    def __init__(self, betas: torch.Tensor) -> None:
        betas = torch.as_tensor(betas).detach().to("cpu", torch.float64)
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a 1-D tensor with at least one entry, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("every beta must lie in (0, 1]")
        T = int(betas.shape[0])
        SDE.__init__(self, T, sampling_eps=1.0 / T)
        self._set_discrete_betas(betas.clamp(max=MAX_BETA))
        log_alphas = torch.log1p(-self.discrete_betas)
        # log abar at t = k / T, k = 0..T; abar_{k-1} (code index) sits at knot k.
        self.log_alphas_cumprod_knots = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(log_alphas, 0)])
        self.log_alphas = log_alphas
        self.beta_min, self.beta_max = float(-T * log_alphas[0]), float(-T * log_alphas[-1])

    def _interval(self, t: torch.Tensor) -> torch.Tensor:
        """The index k of the interval [k / T, (k + 1) / T) holding t (the last one holds t = 1)."""
        return (t * self.N).floor().long().clamp(0, self.N - 1)

    def beta(self, t: TimeLike) -> torch.Tensor:
        t = _as_float64(t)
        return -self.N * self._on("log_alphas", t.device)[self._interval(t)]

    def log_mean_coef(self, t: TimeLike) -> torch.Tensor:
        t = _as_float64(t)
        k = self._interval(t)
        knots = self._on("log_alphas_cumprod_knots", t.device)
        # Written as knot + fraction * step, so that at a knot it is the cumulative sum itself.
        log_abar = knots[k] + (t * self.N - k) * self._on("log_alphas", t.device)[k]
        return 0.5 * log_abar


def sde_from_diffusion(diffusion: GaussianDiffusion) -> DiscreteVPSDE:
    """The VP-type SDE whose marginals equal ``diffusion``'s q(x_t | x0) at t = (i + 1) / T."""
    return DiscreteVPSDE(diffusion.betas)


class DiffusionScore:
    """s(x, t) = -eps_hat(x, t) / sqrt(1 - abar(t)) from a discrete diffusion's network.

    The network sees the fractional code timestep tau = t T - 1 (clamped to 0..T-1) as a float
    tensor; abar(t) is that of ``sde_from_diffusion``. x0 and v outputs become eps_hat with
    abar(t): eps = (x - sqrt(abar) x0) / sqrt(1 - abar), eps = sqrt(abar) v + sqrt(1 - abar) x.
    A learned-variance output (2C channels) contributes its first C channels. The conversion runs
    in float64; the score is returned in x's dtype. Gradients flow (the ODE likelihood needs them).
    """

    def __init__(self, diffusion: GaussianDiffusion, model: Model) -> None:
        self.diffusion, self.model = diffusion, model
        self.sde = sde_from_diffusion(diffusion)

    def timestep(self, t: TimeLike, x: torch.Tensor) -> torch.Tensor:
        """The network's fractional code timestep tau [B] for continuous time t."""
        T = self.diffusion.num_timesteps
        return (_batch_time(t, x) * T - 1.0).clamp(0, T - 1).to(network_time_dtype(x))

    def eps(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """eps_hat(x, t) in float64."""
        tb = _batch_time(t, x)
        out = self.model(x, self.timestep(tb, x))
        expected = (x.shape[0], 2 * x.shape[1], *x.shape[2:]) if self.diffusion.var_type == "learned_range" \
            else tuple(x.shape)
        if tuple(out.shape) != expected:
            raise ValueError(f"var_type={self.diffusion.var_type!r} needs a model output of shape {expected}, "
                             f"got {tuple(out.shape)}")
        out = out[:, : x.shape[1]].to(torch.float64)
        x64 = x.to(torch.float64)
        sqrt_abar = _expand(self.sde.mean_coef(tb), x64)
        std = _expand(self.sde.marginal_std(tb), x64)
        if self.diffusion.mean_type == "eps":
            return out
        if self.diffusion.mean_type == "x0":
            return (x64 - sqrt_abar * out) / std
        return sqrt_abar * out + std * x64

    def __call__(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        std = _expand(self.sde.marginal_std(_batch_time(t, x)), x.to(torch.float64))
        return (-self.eps(x, t) / std).to(x.dtype)


def score_from_diffusion(diffusion: GaussianDiffusion, model: Model) -> DiffusionScore:
    """The score s(x, t) of any trained eps / x0 / v network of ``diffusion`` (any schedule and T),
    on the SDE ``sde_from_diffusion(diffusion)`` (available as ``.sde``)."""
    return DiffusionScore(diffusion, model)


def score_from_eps_model(sde: SDE, model: Model, time_scale: float) -> Score:
    """s(x, t) = -model(x, time_scale t) / std(t) for a network trained in continuous time to
    predict the noise (score_sde's VP parametrisation, used here for every SDE)."""

    def score(x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        tb = _batch_time(t, x)
        out = model(x, (time_scale * tb).to(network_time_dtype(x))).to(torch.float64)
        return (-out / _expand(sde.marginal_std(tb), out)).to(x.dtype)

    return score


class DenoisingScoreMatching:
    """Continuous-time denoising score matching (Song et al. 2021, eq. 7) with the score
    s = -net(x_t, time_scale t) / std(t) and t ~ U(eps, 1).

    The loss of an example is lambda(t) * mean_dims (s + z / std)^2 with x_t = mean + std z:
    ``sigma2`` weighting lambda = std^2, i.e. mean((net - z)^2) (score_sde's default, DDPM's
    L_simple); ``g2`` the likelihood weighting lambda = g(t)^2 (Song et al. 2021b), i.e.
    g^2 / std^2 times the sigma2 loss. ``time_scale`` defaults to N - 1 (score_sde's 999 t).
    """

    def __init__(self, sde: SDE, weighting: Weighting = "sigma2", eps: float = 1e-5,
                 time_scale: float | None = None) -> None:
        if weighting not in get_args(Weighting):
            raise ValueError(f"weighting={weighting!r} is not accepted; accepted: {', '.join(get_args(Weighting))}")
        if not 0 < eps < 1:
            raise ValueError(f"eps={eps!r} must lie in (0, 1)")
        time_scale = sde.N - 1 if time_scale is None else time_scale
        if not time_scale > 0:
            raise ValueError(f"time_scale={time_scale!r} must be > 0")
        self.sde, self.weighting, self.eps, self.time_scale = sde, weighting, float(eps), float(time_scale)

    def draw_timesteps(self, batch: int, generator: Generator, device: torch.device | str) -> torch.Tensor:
        """t = eps + (1 - eps) u, u ~ U[0, 1), float64 [batch] (per example with a generator list)."""
        return self.eps + (1.0 - self.eps) * rand((batch,), generator, device, torch.float64)

    def training_losses(self, model: Model, x0: torch.Tensor, t: torch.Tensor | None = None,
                        noise: torch.Tensor | None = None, generator: Generator = None) -> dict[str, torch.Tensor]:
        """Per-example losses [B]: ``loss`` (weighted) and ``mse`` = mean((net - z)^2).

        ``t`` and ``noise`` are drawn from ``generator`` when omitted.
        """
        if t is None:
            t = self.draw_timesteps(x0.shape[0], generator, x0.device)
        if noise is None:
            noise = randn(x0.shape, generator, x0.device, x0.dtype)
        t = _batch_time(t, x0)
        mean, std = self.sde.marginal_prob(x0, t)
        x_t = mean + _expand(std, x0) * noise
        net = model(x_t, (self.time_scale * t).to(network_time_dtype(x0))).to(x0.dtype)
        mse = mean_flat((net - noise).square())
        if self.weighting == "sigma2":
            return {"loss": mse, "mse": mse}
        ratio = self.sde.diffusion_coef(t).square() / self.sde.marginal_std(t).square()
        return {"loss": ratio.to(mse.dtype) * mse, "mse": mse}
