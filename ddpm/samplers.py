"""Sampling loops: ancestral sampling (Ho et al. Algorithm 2), DDIM (Song et al. 2021),
and timestep respacing (Nichol & Dhariwal Sec. 4). Each takes an explicit generator
(or one generator per sample, so that samples do not depend on the batch they are drawn
in) and can record the trajectory at chosen steps.

Trajectory steps count the state: step ``s`` is x_s in the paper's indexing, from
``T`` (the initial noise) down to ``0`` (the sample).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ddpm.diffusion import GaussianDiffusion, Generator, Model, randn_like_batch


def sample_generators(seed: int, indices: Sequence[int] | range, device: torch.device | str = "cpu"
                      ) -> list[torch.Generator]:
    """One generator per sample index, seeded from (seed, index): sample i is the same
    whatever batch it is drawn in and whatever the batch size."""
    gens = []
    for i in indices:
        g = torch.Generator(device=device)
        # Mix the two integers so neighbouring seeds do not share streams.
        g.manual_seed((int(seed) * 1_000_003 + int(i)) % (2**63 - 1))
        gens.append(g)
    return gens


def _trajectory_steps(request: bool | Sequence[int], T: int) -> list[int]:
    if request is True:
        return list(range(T, -1, -1))
    if request is False or request is None:
        return []
    steps = sorted({int(s) for s in request}, reverse=True)
    bad = [s for s in steps if not 0 <= s <= T]
    if bad:
        raise ValueError(f"trajectory steps {bad} lie outside 0..{T}")
    return steps


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="step", leave=False, mininterval=2.0)


@torch.no_grad()
def p_sample_loop(diffusion: GaussianDiffusion, model: Model, shape: Sequence[int],
                  generator: Generator = None, return_trajectory: bool | Sequence[int] = False,
                  clip_denoised: bool = True, device: torch.device | str | None = None,
                  progress: bool = False, noise: torch.Tensor | None = None):
    """Ancestral sampling, Ho et al. Algorithm 2: x_T ~ N(0, I), then x_{t-1} ~ p(x_{t-1} | x_t).

    Returns the samples [shape], or ``(samples, trajectory)`` when ``return_trajectory``
    is True (every step) or a sequence of steps; ``trajectory`` is a dict with ``steps``
    (list of s, descending) and ``x`` [S, *shape].
    """
    device = torch.device(device) if device is not None else _generator_device(generator)
    T = diffusion.num_timesteps
    record = _trajectory_steps(return_trajectory, T)
    # Line 1: x_T ~ N(0, I).
    x = noise.to(device) if noise is not None else randn_like_batch(shape, generator, device)
    frames = [x.clone()] if T in record else []
    for t in _progress(range(T - 1, -1, -1), progress, "sampling"):
        tt = torch.full((shape[0],), t, device=device, dtype=torch.long)
        # Lines 3-4: x_{t-1} = mu_theta(x_t, t) + sigma_t z, with z = 0 at the last step.
        x = diffusion.p_sample(model, x, tt, generator=generator, clip_denoised=clip_denoised)["sample"]
        if t in record:
            frames.append(x.clone())
    if return_trajectory is False or return_trajectory is None:
        return x
    return x, {"steps": record, "x": torch.stack(frames)}


def _generator_device(generator: Generator) -> torch.device:
    if generator is None:
        return torch.device("cpu")
    if isinstance(generator, torch.Generator):
        return generator.device
    return generator[0].device


def space_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """``num_steps`` code timesteps spread evenly over 0..T-1, always keeping 0 and T-1."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps={num_steps} must lie in 1..{num_timesteps} (the timesteps)")
    if num_steps == 1:
        return [num_timesteps - 1]
    idx = torch.linspace(0, num_timesteps - 1, num_steps, dtype=torch.float64).round().long()
    return sorted(set(idx.tolist()))


@torch.no_grad()
def ddim_sample_loop(diffusion: GaussianDiffusion, model: Model, shape: Sequence[int],
                     steps: int | Sequence[int] | None = None, eta: float = 0.0,
                     generator: Generator = None, return_trajectory: bool | Sequence[int] = False,
                     clip_denoised: bool = True, device: torch.device | str | None = None,
                     progress: bool = False, noise: torch.Tensor | None = None):
    """DDIM sampling (Song et al. 2021, eq. 12) over a subsequence of timesteps.

    ``steps`` is a number of evenly spaced steps or an explicit ascending list of code
    timesteps (default: all T). ``eta = 0`` is the deterministic DDIM; ``eta = 1`` on the
    full sequence is ancestral sampling with the ``fixed_small`` variance. Learned
    variances are ignored, as in the paper. Trajectory steps are code timesteps + 1
    (the paper's index of the state), with 0 for the final sample.
    """
    device = torch.device(device) if device is not None else _generator_device(generator)
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
    record = _trajectory_steps(return_trajectory, T)
    abar = diffusion.alphas_cumprod.to(device)
    x = noise.to(device) if noise is not None else randn_like_batch(shape, generator, device)
    frames = [x.clone()] if seq[-1] + 1 in record else []
    for i in _progress(range(len(seq) - 1, -1, -1), progress, "ddim"):
        t, t_prev = seq[i], (seq[i - 1] if i > 0 else -1)
        tt = torch.full((shape[0],), t, device=device, dtype=torch.long)
        out = diffusion.p_mean_variance(model, x, tt, clip_denoised=clip_denoised)
        # eps implied by the (possibly clipped) x0 prediction keeps the update consistent.
        eps = diffusion.predict_eps_from_x0(x, tt, out["pred_x0"])
        a_t = abar[t]
        a_prev = abar[t_prev] if t_prev >= 0 else torch.ones((), dtype=abar.dtype, device=device)
        # Song et al. eq. 16: sigma = eta sqrt((1 - a_prev)/(1 - a_t)) sqrt(1 - a_t/a_prev).
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_t)) * torch.sqrt(1 - a_t / a_prev)
        dir_coef = torch.sqrt((1 - a_prev - sigma**2).clamp(min=0.0))
        x = (a_prev.sqrt().to(x.dtype) * out["pred_x0"] + dir_coef.to(x.dtype) * eps)
        if t_prev >= 0 and eta > 0:
            x = x + sigma.to(x.dtype) * randn_like_batch(shape, generator, device, x.dtype)
        if t_prev + 1 in record:
            frames.append(x.clone())
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
                 device: torch.device | str = "cpu", progress: bool = False,
                 indices: Sequence[int] | None = None) -> tuple[torch.Tensor, dict]:
    """Draw the samples ``indices`` (default: 0..shape[0]-1) in batches, sample i from its
    own generator (seed, i), so the result depends neither on ``batch_size`` nor on how the
    indices are split over torchrun ranks.

    ``sampler``: ``ancestral`` (respaced to ``steps`` when 0 < steps < T) or ``ddim``
    (``steps`` evenly spaced steps, 0 = all). Returns the samples [shape] on the CPU and
    the trajectory: ``steps`` (paper indices of the kept states, from T to 0) and ``x``
    [frames, N, ...].
    """
    if sampler not in ("ancestral", "ddim"):
        raise ValueError(f"sample.sampler={sampler!r} is not accepted; accepted: ancestral, ddim")
    T = diffusion.num_timesteps
    n = int(shape[0])
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
    indices = list(range(n)) if indices is None else list(indices)
    samples, frames = [], []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        gens = sample_generators(seed, chunk, device)
        batch_shape = (len(chunk), *shape[1:])
        if sampler == "ancestral":
            x, traj = p_sample_loop(loop_diffusion, loop_model, batch_shape, generator=gens, device=device,
                                    return_trajectory=record, clip_denoised=clip_denoised, progress=progress)
        else:
            x, traj = ddim_sample_loop(diffusion, model, batch_shape, steps=keep, eta=eta, generator=gens,
                                       device=device, return_trajectory=record, clip_denoised=clip_denoised,
                                       progress=progress)
        samples.append(x.float().cpu())
        frames.append(traj["x"].float().cpu())
    steps_out = [to_original[s] for s in record]
    if not samples:  # a torchrun rank with no share
        return torch.empty((0, *shape[1:])), {"steps": steps_out, "x": torch.empty((len(record), 0, *shape[1:]))}
    return torch.cat(samples), {"steps": steps_out, "x": torch.cat(frames, dim=1)}
