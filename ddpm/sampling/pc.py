"""Predictor-corrector sampling of a score SDE (Song et al. 2021, Sec. 4.2, Algorithms 2-3).

From x(1) ~ prior, each of ``num_steps`` steps at t_i = linspace(1, eps, num_steps)[i] applies a
predictor (one step of a solver of the reverse-time SDE) and a corrector (Langevin MCMC steps
towards p_t). Both are updates ``(x, t) -> (x, x_mean)``, where ``x_mean`` is the update without
its fresh noise.

Predictors (``PREDICTORS``):
- ``euler_maruyama``: x_mean = x - (f(x, t) - g(t)^2 s(x, t)) dt, x = x_mean + g(t) sqrt(dt) z,
  dt = 1 / num_steps. As in score_sde, every step covers 1/N of time although the grid's spacing
  is (1 - eps)/(N - 1): the difference is O(1/N), the order of the method's own error.
- ``reverse_diffusion``: the SDE's own discretization x_{i+1} = x_i + f + G z (``sde.discretize``)
  run backwards, x_mean = x - f + G^2 s, x = x_mean + G z (Song et al. eq. 46).
- ``ancestral``: VP (and ``sde_from_diffusion``'s SDE): x_mean = (x + beta_i s)/sqrt(1 - beta_i),
  x = x_mean + sqrt(beta_i) z, i.e. DDPM's step with variance beta_i (Song et al. eq. 47);
  VE: NCSN's chain inverted, x_mean = x + (sigma_i^2 - sigma_{i-1}^2) s with noise variance
  sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2 (eq. 45). sub-VP has no such chain.
- ``none``: no predictor (a corrector-only sampler).

The discretization steps i = floor(t (N - 1)) of ``reverse_diffusion`` and ``ancestral`` walk the
SDE's own N-step chain, so these two need num_steps = sde.N.

Correctors (``CORRECTORS``), each run ``corrector_steps`` times per step:
- ``langevin``: Algorithm 3 with signal-to-noise ratio ``snr``, the step size from the norms of
  the score and of the noise of each example (score_sde averages them over the batch); biased in
  low dimension, see :func:`langevin_step`.
- ``annealed_langevin``: the same Langevin step with the step size 2 alpha (snr std(t))^2 (score_sde's
  annealed Langevin dynamics corrector), valid in any dimension; see :func:`annealed_langevin_step`.
- ``none``: no corrector (a predictor-only sampler).

Order (``ORDERS``): ``corrector_first`` (the default) runs the corrector and then the predictor in
each step, as score_sde's code does (score_sde_pytorch#50); ``predictor_first`` is the order of
the paper's Algorithm 1.

Noise is drawn with ``ddpm.seeding.randn``: with one generator per example, example b's sample
is the same whatever batch it is drawn in (nothing here couples examples). ``pc_sample`` follows
``ddpm.sampling.contract``: its NFE is counted by wrapping the score in ``CountingScore``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ddpm.diffusion import generator_device
from ddpm.progress import OnStep
from ddpm.sampling.contract import OnState, StateReporter
from ddpm.score.sde import SDE, VESDE, VPSDE, Score, SubVPSDE
from ddpm.seeding import Generator, randn

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral", "none")
CORRECTORS = ("langevin", "annealed_langevin", "none")
ORDERS = ("corrector_first", "predictor_first")

# An update (x, t, generator) -> (x, x_mean); t is float64 [B], and so is the t a score receives.
Update = Callable[[torch.Tensor, torch.Tensor, Generator], tuple[torch.Tensor, torch.Tensor]]


def _per_example(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A coefficient [B] (float64) cast to ``x``'s dtype and shaped to broadcast over ``x``."""
    return coef.to(x.dtype).reshape(x.shape[0], *([1] * (x.ndim - 1)))


def _noise(x: torch.Tensor, generator: Generator) -> torch.Tensor:
    return randn(x.shape, generator, x.device, x.dtype)


def euler_maruyama_step(sde: SDE, score: Score, x: torch.Tensor, t: torch.Tensor, dt: float,
                        generator: Generator = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One Euler-Maruyama step of the reverse SDE dx = (f - g^2 s) dt + g dw-bar, from t to t - dt."""
    drift, g = sde.sde(x, t)
    g = _per_example(g, x)
    x_mean = x - (drift - g.square() * score(x, t).to(x.dtype)) * dt
    return x_mean + g * math.sqrt(dt) * _noise(x, generator), x_mean


def reverse_diffusion_step(sde: SDE, score: Score, x: torch.Tensor, t: torch.Tensor,
                           generator: Generator = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the reverse of ``sde.discretize``: x_mean = x - f + G^2 s, x = x_mean + G z."""
    f, G = sde.discretize(x, t)
    G = _per_example(G, x)
    x_mean = x - f + G.square() * score(x, t).to(x.dtype)
    return x_mean + G * _noise(x, generator), x_mean


def ancestral_step(sde: SDE, score: Score, x: torch.Tensor, t: torch.Tensor,
                   generator: Generator = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step at the discretization step i = floor(t (N - 1)) of a VP or VE SDE
    (Song et al. eqs. 45, 47); the coefficients are computed in float64."""
    i = sde.discrete_timestep(t).to(x.device)
    if isinstance(sde, VPSDE):
        beta = sde.discrete_betas.to(x.device)[i]
        mean_x, mean_s, std = (1.0 - beta).rsqrt(), beta * (1.0 - beta).rsqrt(), beta.sqrt()
    elif isinstance(sde, VESDE):
        sigmas = sde.discrete_sigmas.to(x.device)
        var = sigmas[i].square()
        var_prev = torch.where(i == 0, torch.zeros_like(var), sigmas[(i - 1).clamp(min=0)].square())
        mean_x, mean_s, std = torch.ones_like(var), var - var_prev, (var_prev * (var - var_prev) / var).sqrt()
    else:
        raise ValueError(f"predictor='ancestral' needs a VPSDE (or sde_from_diffusion's SDE) or a VESDE, "
                         f"got {type(sde).__name__}; use 'reverse_diffusion' or 'euler_maruyama'")
    x_mean = _per_example(mean_x, x) * x + _per_example(mean_s, x) * score(x, t).to(x.dtype)
    return x_mean + _per_example(std, x) * _noise(x, generator), x_mean


def langevin_alpha(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """The factor alpha [B] (float64) of the Langevin step size, as score_sde's code has it.

    VP: alpha_i = 1 - beta_i of the discretization step i = floor(t (N - 1)); the paper's
    Algorithm 5 writes abar_i instead (score_sde_pytorch#73), the code is followed here. sub-VP:
    1 - beta(i / (N - 1)) / N, the same VP discrete beta of its beta(t) (score_sde reads
    ``sde.alphas`` there, which its sub-VP SDE lacks). VE: 1.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    if isinstance(sde, VPSDE):
        return sde.alphas.to(t.device)[sde.discrete_timestep(t).to(t.device)]
    if isinstance(sde, SubVPSDE):
        i = sde.discrete_timestep(t).to(t.device)
        return 1.0 - sde.beta(i.to(torch.float64) / max(sde.N - 1, 1)) / sde.N
    if isinstance(sde, VESDE):
        return torch.ones_like(t)
    raise ValueError(f"the Langevin correctors need a VPSDE, SubVPSDE or VESDE, got {type(sde).__name__}")


def langevin_step(sde: SDE, score: Score, x: torch.Tensor, t: torch.Tensor, snr: float,
                  generator: Generator = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One Langevin step at t (Song et al. Algorithm 3): x_mean = x + e s, x = x_mean + sqrt(2 e) z
    with e = 2 alpha (snr ||z|| / ||s||)^2 (alpha from :func:`langevin_alpha`).

    The norms are those of each example, as the paper's Algorithms 4-5 write them for one sample:
    score_sde averages both norms over the batch, which makes a sample's step size, and so the
    sample, depend on the other examples of its batch. Per example, e grows with the ||z|| of the
    noise it scales, and in low dimension that inflates the law: one step on the exact N(m, v I)
    of D > 2 dimensions multiplies E||x - m||^2 by 1 + k (8 + k (D + 2)) / (D - 2), k = 2 alpha snr^2,
    against 1 + k^2 for a step that does not depend on z (:func:`annealed_langevin_step`). The excess shrinks
    like 1/D: use ``annealed_langevin`` for low-dimensional data. Where the score is exactly 0 (e.g. an
    untrained network with a zero output layer) the step is 0 rather than the formula's 0 * inf.
    """
    grad = score(x, t).to(x.dtype)
    z = _noise(x, generator)
    grad_norm = grad.flatten(1).norm(dim=1).to(torch.float64)
    noise_norm = z.flatten(1).norm(dim=1).to(torch.float64)
    ratio = torch.where(grad_norm > 0, noise_norm / grad_norm.clamp(min=torch.finfo(torch.float64).tiny),
                        torch.zeros_like(grad_norm))
    step = 2.0 * langevin_alpha(sde, t).to(x.device) * (snr * ratio).square()
    x_mean = x + _per_example(step, x) * grad
    return x_mean + _per_example((2.0 * step).sqrt(), x) * z, x_mean


def annealed_langevin_step(sde: SDE, score: Score, x: torch.Tensor, t: torch.Tensor, snr: float,
             generator: Generator = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One annealed Langevin dynamics step (score_sde's ``AnnealedLangevinDynamics`` corrector):
    e = 2 alpha (snr std(t))^2 with the perturbation kernel's std(t), no norms.

    For data much narrower than the noise, ||s||^2 ~ D / std(t)^2 and ||z||^2 ~ D, so this is the
    step of :func:`langevin_step` with the norms replaced by their expectations: it depends on
    neither the noise nor the batch, and is valid in any dimension. On VE with alpha = 1 it is
    NCSN's step eps sigma_i^2 / sigma_L^2 for snr = sqrt(eps / (2 sigma_L^2)).
    """
    grad = score(x, t).to(x.dtype)
    _, std = sde.marginal_prob(x, t)
    step = 2.0 * langevin_alpha(sde, t).to(x.device) * (snr * std.to(torch.float64)).square()
    x_mean = x + _per_example(step, x) * grad
    return x_mean + _per_example((2.0 * step).sqrt(), x) * _noise(x, generator), x_mean


def _check_choice(key: str, value: Any, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"{key}={value!r} is not accepted; accepted: {', '.join(accepted)}")


def _check_args(sde: SDE, predictor: str, corrector: str, order: str, snr: float, corrector_steps: int,
                num_steps: int, eps: float) -> None:
    _check_choice("predictor", predictor, PREDICTORS)
    _check_choice("corrector", corrector, CORRECTORS)
    _check_choice("order", order, ORDERS)
    if not (isinstance(snr, int | float) and math.isfinite(snr) and snr > 0):
        raise ValueError(f"snr={snr!r} must be a finite number > 0")
    for key, value in (("corrector_steps", corrector_steps), ("num_steps", num_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r} must be an integer >= 1")
    if not 0 < eps < 1:
        raise ValueError(f"eps={eps!r} must lie in (0, 1) (the time where sampling stops)")
    if predictor in ("reverse_diffusion", "ancestral") and num_steps != sde.N:
        raise ValueError(f"predictor={predictor!r} walks the SDE's own {sde.N}-step discretization, so "
                         f"num_steps must equal sde.N={sde.N}, got {num_steps}; build the SDE with N={num_steps}")


def _updates(sde: SDE, score: Score, predictor: str, corrector: str, order: str, snr: float,
             corrector_steps: int, dt: float) -> list[Update]:
    """The updates of one PC step, in order ("none" contributes nothing)."""
    predictors: dict[str, Update] = {
        "euler_maruyama": lambda x, t, g: euler_maruyama_step(sde, score, x, t, dt, g),
        "reverse_diffusion": lambda x, t, g: reverse_diffusion_step(sde, score, x, t, g),
        "ancestral": lambda x, t, g: ancestral_step(sde, score, x, t, g),
    }
    correctors: dict[str, Update] = {
        "langevin": lambda x, t, g: langevin_step(sde, score, x, t, snr, g),
        "annealed_langevin": lambda x, t, g: annealed_langevin_step(sde, score, x, t, snr, g),
    }
    corrector_updates = [correctors[corrector]] * corrector_steps if corrector != "none" else []
    predictor_updates = [predictors[predictor]] if predictor != "none" else []
    if order == "corrector_first":
        return corrector_updates + predictor_updates
    return predictor_updates + corrector_updates


def pc_timesteps(sde: SDE, num_steps: int | None = None, eps: float | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """The float64 grid t = linspace(1, eps, num_steps) that ``pc_sample`` steps on (score_sde);
    ``num_steps`` defaults to ``sde.N``, ``eps`` to ``sde.sampling_eps``."""
    num_steps = sde.N if num_steps is None else num_steps
    eps = sde.sampling_eps if eps is None else eps
    return torch.linspace(1.0, eps, num_steps, dtype=torch.float64, device=device)


@torch.no_grad()
def pc_sample(sde: SDE, score: Score, shape: Sequence[int], *, predictor: str = "reverse_diffusion",
              corrector: str = "langevin", snr: float = 0.16, corrector_steps: int = 1,
              num_steps: int | None = None, eps: float | None = None, denoise: bool = True,
              order: str = "corrector_first", generator: Generator = None,
              device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
              on_step: OnStep | None = None, states: Sequence[int] | None = None,
              on_state: OnState | None = None) -> torch.Tensor:
    """Predictor-corrector samples [shape] of ``sde`` driven by ``score`` (see the module docstring).

    ``num_steps`` defaults to ``sde.N``, ``eps`` to ``sde.sampling_eps``; the steps run at
    t = linspace(1, eps, num_steps) (score_sde, ``pc_timesteps``). ``denoise=True`` returns the noise-free mean
    ``x_mean`` of the last update of the last step (score_sde's final denoising; a "none" update
    leaves it unchanged, so a corrector-only sampler returns its corrector's mean), False the
    noisy x. ``generator``: None, one generator, or one per example; ``device`` defaults to the
    generator's. ``on_step(done, num_steps)`` follows progress.

    Returns the samples. ``on_state(s, x)`` receives the states ``states`` (default: all, s in
    num_steps..0) in order, where state s = num_steps is the prior draw, s = num_steps - i the
    input of step i, and 0 the returned sample. The NFE (each evaluation on the whole batch; the
    same for every example) is the calls of a ``CountingScore`` passed as ``score``.
    """
    num_steps = sde.N if num_steps is None else num_steps
    eps = sde.sampling_eps if eps is None else eps
    _check_args(sde, predictor, corrector, order, snr, corrector_steps, num_steps, eps)
    device = torch.device(device) if device is not None else generator_device(generator)
    updates = _updates(sde, score, predictor, corrector, order, snr, corrector_steps, 1.0 / num_steps)
    report = StateReporter(on_state, states, range(num_steps, -1, -1), "trajectory steps")
    timesteps = pc_timesteps(sde, num_steps, eps, device)

    x = sde.prior_sampling(shape, generator, device, dtype)
    x_mean = x
    report(num_steps, x)
    for i in range(num_steps):
        t = timesteps[i].repeat(x.shape[0])
        for update in updates:
            x, x_mean = update(x, t, generator)
        if i < num_steps - 1:  # state 0 is the returned sample
            report(num_steps - 1 - i, x)
        if on_step is not None:
            on_step(i + 1, num_steps)
    sample = x_mean if denoise else x
    report(0, sample)
    return sample
