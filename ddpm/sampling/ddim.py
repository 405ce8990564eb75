"""DDIM (Song et al. 2021): the generalized, possibly deterministic reverse process over a
subsequence of a discrete diffusion's timesteps. States are keyed by the paper's index: state
``s`` is x_s, from ``T`` (the initial noise) down to ``0`` (the sample); the sampler follows
``ddpm.sampling.contract``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddpm.diffusion import GaussianDiffusion, Model, generator_device
from ddpm.progress import OnStep
from ddpm.sampling.contract import OnState, StateReporter
from ddpm.sampling.respacing import space_timesteps
from ddpm.seeding import Generator, randn


@torch.no_grad()
def ddim_step(diffusion: GaussianDiffusion, model: Model, x_t: torch.Tensor, t: int, t_prev: int,
              eta: float = 0.0, generator: Generator = None, clip_denoised: bool = True,
              noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One DDIM step from code timestep ``t`` to ``t_prev`` (-1: to the sample), Song et al.
    eq. 12: x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z.

    Returns ``sample`` and ``pred_x0``. ``noise`` replaces the draw of z (used only when
    sigma > 0, i.e. eta > 0 and t_prev >= 0).
    """
    abar = diffusion.alphas_cumprod
    tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
    out = diffusion.p_mean_variance(model, x_t, tt, clip_denoised=clip_denoised)
    # eps implied by the (possibly clipped) x0 prediction keeps the update consistent; it is
    # finite also where abar_t = 0 (jsd's last step: eps = x_t).
    eps = diffusion.predict_eps_from_x0(x_t, tt, out["pred_x0"])
    # abar_prev > 0 always (only the last beta may be 1), so a_t / a_prev is finite.
    a_t = abar[t]
    a_prev = abar[t_prev] if t_prev >= 0 else torch.ones((), dtype=abar.dtype)
    # Song et al. eq. 16: sigma = eta sqrt((1 - a_prev)/(1 - a_t)) sqrt(1 - a_t/a_prev).
    sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_t)) * torch.sqrt(1 - a_t / a_prev)
    dir_coef = torch.sqrt((1 - a_prev - sigma**2).clamp(min=0.0))
    x = a_prev.sqrt().item() * out["pred_x0"] + dir_coef.item() * eps
    if t_prev >= 0 and eta > 0:
        z = noise if noise is not None else randn(x_t.shape, generator, x_t.device, x_t.dtype)
        x = x + sigma.item() * z
    return {"sample": x, "pred_x0": out["pred_x0"]}


@torch.no_grad()
def ddim_sample_loop(diffusion: GaussianDiffusion, model: Model, shape: Sequence[int],
                     steps: int | Sequence[int] | None = None, eta: float = 0.0,
                     generator: Generator = None, clip_denoised: bool = True,
                     device: torch.device | str | None = None, on_step: OnStep | None = None,
                     noise: torch.Tensor | None = None, states: Sequence[int] | None = None,
                     on_state: OnState | None = None) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12) over a subsequence of timesteps.

    ``steps`` is a number of evenly spaced steps or an explicit ascending list of code
    timesteps (default: all T). ``eta = 0`` is the deterministic DDIM; ``eta = 1`` on the
    full sequence is ancestral sampling with the ``fixed_small`` variance. Learned
    variances are ignored, as in the paper. Returns the samples.

    ``on_state(s, x_s)`` receives the states ``states`` (default: all it passes through) in
    order; their keys are code timesteps + 1 (the paper's index of the state), with 0 for the
    final sample, and must be states of the chosen subsequence. ``on_step(done, total)``
    follows the steps done.
    """
    device = torch.device(device) if device is not None else generator_device(generator)
    T = diffusion.num_timesteps
    if steps is None:
        seq = list(range(T))
    elif isinstance(steps, int):
        seq = space_timesteps(T, steps)
    else:
        seq = sorted({int(s) for s in steps})
        if not seq or seq[0] < 0 or seq[-1] >= T:
            raise ValueError(f"DDIM steps must be code timesteps in 0..{T - 1}, got {list(steps)}")
    if eta < 0:
        raise ValueError(f"eta={eta} must be >= 0")
    report = StateReporter(on_state, states, [s + 1 for s in reversed(seq)] + [0], "trajectory steps")
    x = noise.to(device) if noise is not None else randn(shape, generator, device)
    report(seq[-1] + 1, x)
    for i in range(len(seq) - 1, -1, -1):
        t_prev = seq[i - 1] if i > 0 else -1
        x = ddim_step(diffusion, model, x, seq[i], t_prev, eta, generator, clip_denoised)["sample"]
        report(t_prev + 1, x)
        if on_step is not None:
            on_step(len(seq) - i, len(seq))
    return x
