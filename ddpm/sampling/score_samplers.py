"""The score samplers run on the seeded batch loop (``ddpm.batches.seeded_batches``):
predictor-corrector (``pc``), the probability-flow ODE (``ode``) and annealed Langevin dynamics
(``ald``) on a ``ScoreModel``, each with its resolved settings, each recording the same
trajectory labels and the NFE per sample, read through the samplers' contract
(``ddpm.sampling.contract``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ddpm.batches import seeded_batches
from ddpm.progress import OnStep
from ddpm.sampling.ald import ald_sample
from ddpm.sampling.contract import CountingScore, StateRecorder
from ddpm.sampling.ode import ode_sample
from ddpm.sampling.pc import pc_sample, pc_timesteps
from ddpm.sampling.runner import even_picks
from ddpm.score.model import ScoreModel

SCORE_SAMPLERS = ("pc", "ode", "ald")


def _pc(model: ScoreModel, settings: dict[str, Any], shape: Sequence[int], gens: list, frames: int,
        device: torch.device, dtype: torch.dtype, on_step: OnStep | None):
    num_steps = settings["num_steps"]
    states = even_picks(list(range(num_steps, -1, -1)), frames)
    score, kept = CountingScore(model.score), StateRecorder()
    x = pc_sample(model.sde, score, shape, predictor=settings["predictor"], corrector=settings["corrector"],
                  snr=settings["snr"], corrector_steps=settings["corrector_steps"], num_steps=num_steps,
                  generator=gens, device=device, dtype=dtype, states=states, on_state=kept, on_step=on_step)
    times = pc_timesteps(model.sde, num_steps, device=device).tolist()
    # State s > 0 is the input of step num_steps - s (s = num_steps: the prior draw at t = 1).
    labels = [f"t={times[num_steps - st]:.3g}" if st else "sample" for st in kept.keys]
    return x, labels, kept.stacked(), float(score.calls)


def _ode(model: ScoreModel, settings: dict[str, Any], shape: Sequence[int], gens: list, frames: int,
         device: torch.device, dtype: torch.dtype, on_step: OnStep | None):
    eps, denoise = settings["sample_eps"], settings["denoise"]
    # With the denoising step the last of the frames is the denoised sample, after x(eps).
    times = torch.linspace(1.0, eps, frames - int(denoise), dtype=torch.float64).tolist()
    kept, nfe = StateRecorder(), []
    x = ode_sample(model.sde, model.score, shape, rtol=settings["rtol"], atol=settings["atol"], eps=eps,
                   denoise=denoise, generator=gens, device=device, dtype=dtype, states=times, on_state=kept,
                   on_nfe=nfe.append)
    labels = [f"t={t:.3g}" for t in kept.keys]
    if denoise:
        labels = [*labels, "denoised"]
        kept.states.append(x)  # the denoised sample: the last frame
    else:
        labels[-1] = "sample"
    return x, labels, kept.stacked(), nfe[0].double()


def _ald(model: ScoreModel, settings: dict[str, Any], shape: Sequence[int], gens: list, frames: int,
         device: torch.device, dtype: torch.dtype, on_step: OnStep | None):
    L = len(model.sigmas)
    levels = even_picks(list(range(-1, L + int(settings["denoise"]))), frames)
    score, kept = CountingScore(model.level_score), StateRecorder()
    x = ald_sample(score, model.sigmas, shape, generator=gens, device=device, dtype=dtype, states=levels,
                   on_state=kept, on_step=on_step, **settings)
    sig = model.sigmas.tolist()
    labels = ["init" if i == -1 else "denoised" if i == L else f"sigma={sig[i]:.3g}" for i in kept.keys]
    return x, labels, kept.stacked(), float(score.calls)


_SCORE_SAMPLERS = {"pc": _pc, "ode": _ode, "ald": _ald}


def draw_score_samples(model: ScoreModel, sampler: str, settings: dict[str, Any], shape: Sequence[int], seed: int,
                       batch_size: int = 256, trajectory_frames: int = 10, device: torch.device | str = "cpu",
                       on_step: OnStep | None = None, indices: Sequence[int] | None = None,
                       dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict[str, Any]]:
    """Draw the samples ``indices`` (default 0..shape[0]-1) with the score sampler ``sampler``
    (pc, ode or ald) and its resolved ``settings``: pc's predictor, corrector, snr,
    corrector_steps and num_steps (on ``model.sde``, a discretization of num_steps); the ODE's
    rtol, atol, sample_eps and denoise; ALD's steps_per_level, step_lr, denoise and init.

    Returns the samples [n, ...] on the CPU and ``{"labels": the trajectory's states from noise to
    sample, "x": [frames, n, ...], "nfe": NFE per sample [n] (float64; adaptive for ode)}``.
    ``on_step(done, total)`` follows pc's steps and ald's score evaluations (ode reports none).
    ``dtype``: what the samplers compute in, and so what the network is called in, and the
    samples' dtype (float64 with a float64 network: a sample the same in any batch up to float64
    rounding, where a float32 network's batched calls round differently per batch size).
    """
    if sampler not in SCORE_SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is not a score sampler; accepted: {', '.join(SCORE_SAMPLERS)}")
    draw = _SCORE_SAMPLERS[sampler]
    device = torch.device(device)
    indices = list(range(int(shape[0]))) if indices is None else list(indices)
    samples, frames, nfes, labels = [], [], [], []
    for chunk, gens, batch_step in seeded_batches(indices, batch_size, seed, "sample", device, on_step):
        batch_shape = (len(chunk), *shape[1:])
        x, labels, traj, nfe = draw(model, settings, batch_shape, gens, trajectory_frames, device, dtype, batch_step)
        samples.append(x.to(dtype).cpu())
        frames.append(traj.to(dtype).cpu())
        nfes.append(torch.as_tensor(nfe, dtype=torch.float64).expand(len(chunk)).cpu())
    if not samples:  # a torchrun rank with no share
        return torch.empty((0, *shape[1:]), dtype=dtype), {
            "labels": [], "x": torch.empty((trajectory_frames, 0, *shape[1:]), dtype=dtype),
            "nfe": torch.empty(0, dtype=torch.float64)}
    return torch.cat(samples), {"labels": labels, "x": torch.cat(frames, dim=1), "nfe": torch.cat(nfes)}
