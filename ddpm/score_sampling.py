"""Any trained model as a score, and the score samplers run in per-example-seeded batches.

``score_model`` turns a checkpoint of any family into what the score samplers and the ODE
likelihood need: for ``ddpm`` the VP-type SDE of its discrete diffusion and the score of its
eps / x0 / v network (``ddpm.sde.sde_from_diffusion``, ``score_from_diffusion``), for ``sde``
its SDE and ``score_from_eps_model``, for ``ncsn`` its noise levels and ``score_from_ncsn``.

``draw_score_samples`` draws with ``pc_sample``, ``ode_sample`` or ``ald_sample`` (the params'
``sample.sampler``); sample i comes from item i of the run's "sample" stream, so a sample does
not depend on its batch, the batch size or the torchrun split (as ``ddpm.samplers.draw_samples``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ddpm.config import AUTO, TRAIN_RESOLVED, Params
from ddpm.diffusion import OnStep, batch_progress
from ddpm.factory import TrainedModel, build_sde, ncsn_sigmas
from ddpm.ncsn import LevelScore, ald_sample, langevin_step_size, score_from_ncsn
from ddpm.ode import ode_sample
from ddpm.pc import pc_sample
from ddpm.sde import SDE, Score, score_from_diffusion, score_from_eps_model
from ddpm.seeding import generators

# NCSN's budget of network evaluations: steps_per_level auto is ceil(NCSN_BUDGET / L), which is
# NCSN's 100 steps at its 10 levels and NCSNv2's 5 at CIFAR-10's 232, and about DDPM's 1000 steps.
NCSN_BUDGET = 1000


@dataclass
class ScoreModel:
    """A trained model as the score samplers see it: a continuous-time ``sde`` and ``score``
    (families ddpm and sde), or NCSN's ``sigmas`` (descending) and level-indexed ``level_score``."""

    family: str
    sde: SDE | None = None
    score: Score | None = None
    sigmas: torch.Tensor | None = None
    level_score: LevelScore | None = None


def score_model(trained: TrainedModel) -> ScoreModel:
    """The score of a trained model of any family (its network in eval mode, on its device)."""
    p = trained.params
    if p.family == "ddpm":
        score = score_from_diffusion(trained.diffusion, trained.network)
        return ScoreModel("ddpm", sde=score.sde, score=score)
    if p.family == "sde":
        sde = build_sde(p)
        # The network saw (N - 1) t in training (ddpm.sde.DenoisingScoreMatching's time_scale).
        return ScoreModel("sde", sde=sde, score=score_from_eps_model(sde, trained.network, sde.N - 1))
    sigmas = ncsn_sigmas(p)
    return ScoreModel("ncsn", sigmas=sigmas, level_score=score_from_ncsn(sigmas, trained.network))


def with_trained_keys(params: Params, trained: Params) -> Params:
    """The current ``params`` with the keys the train stage derived from the data
    (``ddpm.config.TRAIN_RESOLVED``) taken from the checkpoint's config ``trained``."""
    sections = {}
    for key in TRAIN_RESOLVED:
        section, name = key.split(".")
        current = sections.get(section, getattr(params, section))
        sections[section] = dataclasses.replace(current, **{name: getattr(getattr(trained, section), name)})
    return dataclasses.replace(params, **sections)


def ald_settings(params: Params) -> dict[str, Any]:
    """NCSN's sampling settings with ``ddpm.config.SAMPLE_RESOLVED`` resolved from the stored
    ladder: steps_per_level = ceil(NCSN_BUDGET / L), step_lr by NCSNv2's technique 4 for those
    steps and the ladder's ratio gamma."""
    n = params.ncsn
    sigmas = ncsn_sigmas(params)
    steps = math.ceil(NCSN_BUDGET / len(sigmas)) if n.steps_per_level == AUTO else n.steps_per_level
    gamma = (sigmas[0] / sigmas[-1]).item() ** (1 / (len(sigmas) - 1))
    step_lr = langevin_step_size(n.sigma_min, gamma, steps) if n.step_lr == AUTO else n.step_lr
    return {"steps_per_level": steps, "step_lr": step_lr, "denoise": n.denoise, "init": n.init}


def ode_settings(params: Params) -> dict[str, Any]:
    """The ODE sampler's resolved settings, recorded with its samples (sampling.json)."""
    o = params.ode
    return {"rtol": o.rtol, "atol": o.atol, "sample_eps": o.sample_eps, "denoise": o.denoise}


def sampler_settings(params: Params) -> dict[str, Any]:
    """The resolved settings of the score sampler ``params.sample.sampler`` that are not in
    the sample section itself: the ODE's and ALD's ({} for pc)."""
    sampler = params.sample.sampler
    return ald_settings(params) if sampler == "ald" else ode_settings(params) if sampler == "ode" else {}


def _even(values: Sequence[Any], count: int) -> list[Any]:
    """``count`` entries spread evenly over ``values``, first and last kept."""
    idx = torch.linspace(0, len(values) - 1, min(count, len(values))).round().long().tolist()
    return [values[i] for i in sorted(set(idx))]


def _pc(model: ScoreModel, params: Params, shape: Sequence[int], gens: list, frames: int, device: torch.device,
        dtype: torch.dtype, on_step: OnStep | None) -> tuple[torch.Tensor, list[str], torch.Tensor, float]:
    s = params.sample
    sde = model.sde
    num_steps = s.steps or sde.N
    if params.family == "sde" and num_steps != sde.N:
        # The sampler walks a discretization of num_steps; the score keeps the trained time scale.
        sde = build_sde(params, num_scales=num_steps)
    states = _even(list(range(num_steps, -1, -1)), frames)
    x, info = pc_sample(sde, model.score, shape, predictor=s.predictor, corrector=s.corrector, snr=s.snr,
                        corrector_steps=s.corrector_steps, num_steps=num_steps, generator=gens, device=device,
                        dtype=dtype, return_trajectory=states, on_step=on_step)
    times = info["timesteps"].tolist()
    # State s > 0 is the input of step num_steps - s (s = num_steps: the prior draw at t = 1).
    labels = [f"t={times[num_steps - st]:.3g}" if st else "sample" for st in info["trajectory"]["steps"]]
    return x, labels, info["trajectory"]["x"], float(info["nfe"])


def _ode(model: ScoreModel, params: Params, shape: Sequence[int], gens: list, frames: int, device: torch.device,
         dtype: torch.dtype) -> tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor]:
    o = params.ode
    # With the denoising step the last of the frames is the denoised sample, after x(eps).
    times = torch.linspace(1.0, o.sample_eps, frames - int(o.denoise), dtype=torch.float64).tolist()
    out = ode_sample(model.sde, model.score, shape, rtol=o.rtol, atol=o.atol, eps=o.sample_eps, denoise=o.denoise,
                     generator=gens, device=device, dtype=dtype, return_trajectory=times)
    labels = [f"t={t:.3g}" for t in out["trajectory"]["t"].tolist()]
    x = out["trajectory"]["x"]
    if o.denoise:
        labels, x = [*labels, "denoised"], torch.cat([x, out["samples"][None]])
    else:
        labels[-1] = "sample"
    return out["samples"], labels, x, out["nfe"].double()


def _ald(model: ScoreModel, params: Params, shape: Sequence[int], gens: list, frames: int, device: torch.device,
         dtype: torch.dtype, on_step: OnStep | None) -> tuple[torch.Tensor, list[str], torch.Tensor, float]:
    settings = ald_settings(params)
    L = len(model.sigmas)
    levels = _even(list(range(-1, L + int(settings["denoise"]))), frames)
    x, info = ald_sample(model.level_score, model.sigmas, shape, generator=gens, device=device, dtype=dtype,
                         return_trajectory=levels, on_step=on_step, **settings)
    sig = model.sigmas.tolist()
    labels = ["init" if i == -1 else "denoised" if i == L else f"sigma={sig[i]:.3g}"
              for i in info["trajectory"]["level"].tolist()]
    return x, labels, info["trajectory"]["x"], float(info["nfe"])


def draw_score_samples(model: ScoreModel, params: Params, shape: Sequence[int], seed: int, batch_size: int = 256,
                       trajectory_frames: int = 10, device: torch.device | str = "cpu",
                       on_step: OnStep | None = None, indices: Sequence[int] | None = None,
                       dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict[str, Any]]:
    """Draw the samples ``indices`` (default 0..shape[0]-1) with ``params.sample.sampler`` (pc, ode
    or ald), in batches of ``batch_size``, sample i from item i of the "sample" stream.

    Returns the samples [n, ...] on the CPU and ``{"labels": the trajectory's states from noise to
    sample, "x": [frames, n, ...], "nfe": NFE per sample [n] (float64; adaptive for ode)}``.
    ``on_step(done, total)`` follows pc's steps and ald's score evaluations (ode reports none).
    ``dtype``: what the samplers compute in, and so what the network is called in, and the
    samples' dtype (float64 with a float64 network: a sample the same in any batch up to float64
    rounding, where a float32 network's batched calls round differently per batch size).
    """
    sampler = params.sample.sampler
    if sampler not in ("pc", "ode", "ald"):
        raise ValueError(f"sampler={sampler!r} is not a score sampler; accepted: pc, ode, ald")
    device = torch.device(device)
    indices = list(range(int(shape[0]))) if indices is None else list(indices)
    starts = range(0, len(indices), batch_size)
    samples, frames, nfes, labels = [], [], [], []
    for batch, start in enumerate(starts):
        chunk = indices[start:start + batch_size]
        gens = generators(seed, "sample", chunk, device)
        batch_shape = (len(chunk), *shape[1:])
        batch_step = None if on_step is None else batch_progress(on_step, batch, len(starts))
        if sampler == "pc":
            x, labels, traj, nfe = _pc(model, params, batch_shape, gens, trajectory_frames, device, dtype,
                                       batch_step)
        elif sampler == "ode":
            x, labels, traj, nfe = _ode(model, params, batch_shape, gens, trajectory_frames, device, dtype)
        else:
            x, labels, traj, nfe = _ald(model, params, batch_shape, gens, trajectory_frames, device, dtype,
                                        batch_step)
        samples.append(x.to(dtype).cpu())
        frames.append(traj.to(dtype).cpu())
        nfes.append(torch.as_tensor(nfe, dtype=torch.float64).expand(len(chunk)).cpu())
    if not samples:  # a torchrun rank with no share
        return torch.empty((0, *shape[1:]), dtype=dtype), {
            "labels": [], "x": torch.empty((trajectory_frames, 0, *shape[1:]), dtype=dtype),
            "nfe": torch.empty(0, dtype=torch.float64)}
    return torch.cat(samples), {"labels": labels, "x": torch.cat(frames, dim=1), "nfe": torch.cat(nfes)}
