"""The probability-flow ODE as a sampler (score_sde's ODE sampler): integrate from a prior
sample at t = 1 down to eps with the solver of ``ddpm.score.ode``, then, by default, score_sde's
final noise-free denoising step (``denoise_step``). It follows ``ddpm.sampling.contract``, but
for its NFE: the adaptive solver takes its own steps per example, reported to ``on_nfe``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ddpm.sampling.contract import OnState, StateReporter
from ddpm.score.ode import Score, check_solver_args, solve
from ddpm.seeding import Generator

TRAJECTORY_FRAMES = 11  # the states ode_sample reports for states=None, t = 1 .. eps


def denoise_step(sde: Any, score: Score, x: torch.Tensor, t: float) -> torch.Tensor:
    """score_sde's final denoising of a sample x at time t: one step of the reverse-diffusion
    predictor (Song et al. 2021, eq. 46) without its noise, x - f + G^2 s(x, t) with
    (f, G) = ``sde.discretize(x, t)``.

    At the sampler's t = eps this is a Tweedie-type estimate of the clean data (Tweedie:
    E[x0 | x] = (x + std^2 s) / mean_coef). VE (G = sigma_min at step 0): x + sigma_min^2 s,
    whose sigma_min^2 is sigma(eps)^2 to a relative (sigma_max / sigma_min)^(2 eps) - 1 (1.6e-4 for
    50 / 0.02 at eps = 1e-5). The VP-type SDE of a discrete diffusion at eps = 1 / T (std^2 =
    beta_1): (2 - sqrt(1 - beta_1)) x + beta_1 s, Tweedie's (x + beta_1 s) / sqrt(1 - beta_1) to
    O(beta_1^2) |x| + O(beta_1^2) |s|. VP and sub-VP: the same form with their own first step,
    whose beta_min / N is 0.9 of VP's std(1e-3)^2. Without it, ODE samples keep noise of about
    std(eps) (0.01 for VP at eps = 1e-3, sigma_min for VE), more than a grey level of 8-bit data.
    """
    f, G = sde.discretize(x, t)
    G2 = G.to(torch.float64).square().to(x.dtype).reshape(x.shape[0], *([1] * (x.ndim - 1)))
    tb = torch.full((x.shape[0],), float(t), dtype=torch.float64, device=x.device)
    return x - f + G2 * score(x, tb).to(x.dtype)


@torch.no_grad()
def ode_sample(sde: Any, score: Score, shape_or_noise: Sequence[int] | torch.Tensor, *, rtol: float = 1e-5,
               atol: float = 1e-5, eps: float = 1e-3, denoise: bool = True, generator: Generator = None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               states: Sequence[float] | None = None, on_state: OnState | None = None,
               on_nfe: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Samples by integrating the probability-flow ODE from t = 1 down to ``eps`` (score_sde's
    ODE sampler), then with ``denoise`` (the default, as every score_sde config's
    ``noise_removal``) one noise-free reverse-diffusion step at eps (``denoise_step``, one more
    score evaluation); ``denoise=False`` returns the ODE's x(eps) itself.

    ``shape_or_noise``: a shape, for a prior sample drawn from ``generator`` (one per example
    makes every sample independent of its batch) on ``device`` in ``dtype``; or the prior
    sample x(1) itself. Returns the samples (x(1)'s dtype).

    ``on_state(t, x(t))`` receives the ODE's states at the times ``states`` (in [eps, 1]; default
    TRAJECTORY_FRAMES times from 1 to eps) in descending order, read from the solver's dense
    output after the solve (no extra NFE; the denoised sample is the returned one).
    ``on_nfe(nfe)`` receives, once, each example's NFE (LongTensor [B]: the solver's evaluations,
    plus 1 for the denoising step): the exception to the contract's ``CountingScore``, which
    counts the batched calls (the slowest example's NFE) but cannot see the steps of each example.
    """
    check_solver_args(eps=eps, rtol=rtol, atol=atol)
    if isinstance(shape_or_noise, torch.Tensor):
        x1 = shape_or_noise
    else:
        x1 = sde.prior_sampling(tuple(shape_or_noise), generator=generator, device=device, dtype=dtype)
    report = StateReporter(on_state, states, torch.linspace(1.0, eps, TRAJECTORY_FRAMES, dtype=torch.float64).tolist(),
                           "trajectory times", span=(1.0, eps))
    times = report.keys
    B, D = x1.shape[0], x1[0].numel()

    def rhs(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        drift = sde.ode_drift(y.reshape(x1.shape).to(x1.dtype), t, score)
        return drift.reshape(B, D).to(torch.float64)

    evaluate_at = sorted({*times, eps}, reverse=True)
    t_eval = torch.tensor(evaluate_at, dtype=torch.float64, device=x1.device).expand(B, -1)
    sol, nfe, _ = solve(rhs, x1.reshape(B, D).to(torch.float64), 1.0, eps, rtol, atol, t_eval=t_eval)
    ys = sol.ys.transpose(0, 1).reshape(len(evaluate_at), *x1.shape).to(x1.dtype)
    for t in times:
        report(t, ys[evaluate_at.index(t)])
    samples = ys[-1]
    if denoise:
        samples = denoise_step(sde, score, samples, eps)
        nfe = nfe + 1
    if on_nfe is not None:
        on_nfe(nfe)
    return samples
