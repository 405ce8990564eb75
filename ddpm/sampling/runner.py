"""Every sampler run the same way (``seeded_batches``): the samples ``indices`` in batches,
sample i from item i of the run's "sample" stream (``ddpm.seeding``), so a sample depends
neither on its batch, nor on the batch size, nor on how the indices are split over torchrun
ranks; the trajectory is ``trajectory_frames`` states spread evenly from noise to sample
(``even_picks``).

``draw_samples`` runs the discrete diffusion's samplers: ancestral, respaced to fewer steps, and
DDIM, both under the samplers' contract (``ddpm.sampling.contract``; ``GaussianDiffusion``'s own
loop, public API, through ``ancestral_sample``). The score samplers run through
``ddpm.sampling.score_samplers`` on the same loop, in a module of their own so that the quality
stage, which sweeps only these two, does not depend on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ddpm.batches import seeded_batches
from ddpm.diffusion import GaussianDiffusion, Model
from ddpm.progress import OnStep
from ddpm.sampling.contract import OnState, StateRecorder
from ddpm.sampling.ddim import ddim_sample_loop
from ddpm.sampling.respacing import respace, space_timesteps


def even_picks(values: Sequence[Any], count: int) -> list[Any]:
    """``count`` entries spread evenly over ``values``, first and last kept."""
    idx = torch.linspace(0, len(values) - 1, min(count, len(values))).round().long().tolist()
    return [values[i] for i in sorted(set(idx))]


def ancestral_sample(diffusion: GaussianDiffusion, model: Model, shape: Sequence[int], *,
                     states: Sequence[int], on_state: OnState, **kwargs: Any) -> torch.Tensor:
    """``diffusion.p_sample_loop`` (its keyword arguments ``kwargs``) under the samplers' contract:
    returns the samples and gives ``on_state(s, x_s)`` the states ``states`` (paper indices)."""
    x, trajectory = diffusion.p_sample_loop(model, shape, return_trajectory=states, **kwargs)
    for s, state in zip(trajectory["steps"], trajectory["x"], strict=True):
        on_state(s, state)
    return x


@torch.no_grad()
def draw_samples(diffusion: GaussianDiffusion, model: Model, shape: Sequence[int], seed: int,
                 batch_size: int = 256, sampler: str = "ancestral", steps: int = 0, eta: float = 0.0,
                 clip_denoised: bool = True, trajectory_frames: int = 10,
                 device: torch.device | str = "cpu", on_step: OnStep | None = None,
                 indices: Sequence[int] | None = None) -> tuple[torch.Tensor, dict]:
    """Draw the samples ``indices`` (default: 0..shape[0]-1) of a discrete diffusion.

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
        record = even_picks(list(range(len(keep), -1, -1)), trajectory_frames)
    else:
        keep = space_timesteps(T, steps) if steps else list(range(T))
        to_original = {s: s for s in [0] + [k + 1 for k in keep]}
        record = even_picks(sorted(to_original, reverse=True), trajectory_frames)
    indices = list(range(int(shape[0]))) if indices is None else list(indices)
    samples, frames = [], []
    for chunk, gens, batch_step in seeded_batches(indices, batch_size, seed, "sample", device, on_step):
        batch_shape = (len(chunk), *shape[1:])
        kept = StateRecorder()
        if sampler == "ancestral":
            x = ancestral_sample(loop_diffusion, loop_model, batch_shape, states=record, on_state=kept,
                                 generator=gens, device=device, clip_denoised=clip_denoised, on_step=batch_step)
        else:
            x = ddim_sample_loop(diffusion, model, batch_shape, steps=keep, eta=eta, generator=gens, device=device,
                                 states=record, on_state=kept, clip_denoised=clip_denoised, on_step=batch_step)
        samples.append(x.float().cpu())
        frames.append(kept.stacked().float().cpu())
    steps_out = [to_original[s] for s in record]
    if not samples:  # a torchrun rank with no share
        return torch.empty((0, *shape[1:])), {"steps": steps_out, "x": torch.empty((len(record), 0, *shape[1:]))}
    return torch.cat(samples), {"steps": steps_out, "x": torch.cat(frames, dim=1)}
