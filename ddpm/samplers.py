"""Samplers beyond the ancestral loop (``GaussianDiffusion.p_sample_loop``, Ho et al.
Algorithm 2): DDIM (Song et al. 2021), timestep respacing (Nichol & Dhariwal Sec. 4), and
``draw_samples``, which runs either in batches. Each takes an explicit generator (or one
generator per sample, so that samples do not depend on the batch they are drawn in) and can
record the trajectory at chosen steps.

Trajectory steps count the state: step ``s`` is x_s in the paper's indexing, from
``T`` (the initial noise) down to ``0`` (the sample).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddpm.diffusion import GaussianDiffusion, Model, OnStep, batch_progress, generator_device, trajectory_steps
from ddpm.seeding import Generator, generators, randn


def space_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """``num_steps`` code timesteps spread evenly over 0..T-1, always keeping 0 and T-1."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps={num_steps} must lie in 1..{num_timesteps} (the timesteps)")
    if num_steps == 1:
        return [num_timesteps - 1]
    idx = torch.linspace(0, num_timesteps - 1, num_steps, dtype=torch.float64).round().long()
    return sorted(set(idx.tolist()))


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
                     generator: Generator = None, return_trajectory: bool | Sequence[int] = False,
                     clip_denoised: bool = True, device: torch.device | str | None = None,
                     on_step: OnStep | None = None, noise: torch.Tensor | None = None):
    """DDIM sampling (Song et al. 2021, eq. 12) over a subsequence of timesteps.

    ``steps`` is a number of evenly spaced steps or an explicit ascending list of code
    timesteps (default: all T). ``eta = 0`` is the deterministic DDIM; ``eta = 1`` on the
    full sequence is ancestral sampling with the ``fixed_small`` variance. Learned
    variances are ignored, as in the paper. Trajectory steps are code timesteps + 1
    (the paper's index of the state), with 0 for the final sample. ``on_step(done, total)``
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
    record = trajectory_steps(return_trajectory, T)
    x = noise.to(device) if noise is not None else randn(shape, generator, device)
    frames = [x.clone()] if seq[-1] + 1 in record else []
    for i in range(len(seq) - 1, -1, -1):
        t_prev = seq[i - 1] if i > 0 else -1
        x = ddim_step(diffusion, model, x, seq[i], t_prev, eta, generator, clip_denoised)["sample"]
        if t_prev + 1 in record:
            frames.append(x.clone())
        if on_step is not None:
            on_step(len(seq) - i, len(seq))
    if return_trajectory is False or return_trajectory is None:
        return x
    kept = [s for s in record if s == 0 or s - 1 in seq]
    return x, {"steps": kept, "x": torch.stack(frames)}


class _RespacedModel:
    """Maps the respaced diffusion's timesteps 0..K-1 back to the original ones."""

    def __init__(self, model: Model, timestep_map: torch.Tensor) -> None:
        self.model = model
        self.timestep_map = timestep_map

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x_t, self.timestep_map.to(t.device)[t])


def respace(diffusion: GaussianDiffusion, use_timesteps: Sequence[int], model: Model
            ) -> tuple[GaussianDiffusion, Model]:
    """A diffusion over a subset of code timesteps and the model wrapped to match.

    New betas come from the retained alphas_cumprod: beta_i = 1 - abar_{t_i} / abar_{t_{i-1}}
    (improved-diffusion's respacing), so q(x_t | x0) is unchanged at every kept step.
    """
    keep = sorted({int(t) for t in use_timesteps})
    if not keep or keep[0] < 0 or keep[-1] >= diffusion.num_timesteps:
        raise ValueError(f"use_timesteps must lie in 0..{diffusion.num_timesteps - 1}")
    abar = diffusion.alphas_cumprod[keep]
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    betas = 1.0 - abar / prev
    spaced = GaussianDiffusion(betas, mean_type=diffusion.mean_type, var_type=diffusion.var_type,
                               loss_type=diffusion.loss_type, loss_norm=diffusion.loss_norm,
                               hybrid_lambda=diffusion.hybrid_lambda)
    return spaced, _RespacedModel(model, torch.tensor(keep, dtype=torch.long))


def _even_picks(states: list[int], count: int) -> list[int]:
    """``count`` entries spread evenly over ``states`` (descending), first and last kept."""
    idx = torch.linspace(0, len(states) - 1, min(count, len(states))).round().long().tolist()
    return [states[i] for i in sorted(set(idx))]


@torch.no_grad()
def draw_samples(diffusion: GaussianDiffusion, model: Model, shape: Sequence[int], seed: int,
                 batch_size: int = 256, sampler: str = "ancestral", steps: int = 0, eta: float = 0.0,
                 clip_denoised: bool = True, trajectory_frames: int = 10,
                 device: torch.device | str = "cpu", on_step: OnStep | None = None,
                 indices: Sequence[int] | None = None) -> tuple[torch.Tensor, dict]:
    """Draw the samples ``indices`` (default: 0..shape[0]-1) in batches, sample i from item i
    of the run's "sample" stream (``ddpm.seeding``), so the result depends neither on
    ``batch_size`` nor on how the indices are split over torchrun ranks.

    ``sampler``: ``ancestral`` (respaced to ``steps`` when 0 < steps < T) or ``ddim``
    (``steps`` evenly spaced steps, 0 = all). Returns the samples [shape] on the CPU and
    the trajectory: ``steps`` (paper indices of the kept states, from T to 0) and ``x``
    [frames, N, ...]. ``on_step(done, total)`` counts the reverse steps of all batches.
    """
    if sampler not in ("ancestral", "ddim"):
        raise ValueError(f"sampler={sampler!r} is not accepted; accepted: ancestral, ddim")
    T = diffusion.num_timesteps
    if sampler == "ancestral":
        keep = space_timesteps(T, steps) if 0 < steps < T else list(range(T))
        loop_diffusion, loop_model = respace(diffusion, keep, model) if len(keep) < T else (diffusion, model)
        # State s of the loop is x_{keep[s-1]+1} of the original process.
        to_original = {0: 0, **{s: keep[s - 1] + 1 for s in range(1, len(keep) + 1)}}
        record = _even_picks(list(range(len(keep), -1, -1)), trajectory_frames)
    else:
        keep = space_timesteps(T, steps) if steps else list(range(T))
        to_original = {s: s for s in [0] + [k + 1 for k in keep]}
        record = _even_picks(sorted(to_original, reverse=True), trajectory_frames)
    indices = list(range(int(shape[0]))) if indices is None else list(indices)
    starts = range(0, len(indices), batch_size)
    samples, frames = [], []
    for batch, start in enumerate(starts):
        chunk = indices[start:start + batch_size]
        gens = generators(seed, "sample", chunk, device)
        batch_shape = (len(chunk), *shape[1:])
        batch_step = None if on_step is None else batch_progress(on_step, batch, len(starts))
        if sampler == "ancestral":
            x, traj = loop_diffusion.p_sample_loop(loop_model, batch_shape, generator=gens, device=device,
                                                   return_trajectory=record, clip_denoised=clip_denoised,
                                                   on_step=batch_step)
        else:
            x, traj = ddim_sample_loop(diffusion, model, batch_shape, steps=keep, eta=eta, generator=gens,
                                       device=device, return_trajectory=record, clip_denoised=clip_denoised,
                                       on_step=batch_step)
        samples.append(x.float().cpu())
        frames.append(traj["x"].float().cpu())
    steps_out = [to_original[s] for s in record]
    if not samples:  # a torchrun rank with no share
        return torch.empty((0, *shape[1:])), {"steps": steps_out, "x": torch.empty((len(record), 0, *shape[1:]))}
    return torch.cat(samples), {"steps": steps_out, "x": torch.cat(frames, dim=1)}

