"""Bridges from the typed config to the library's plain-argument constructors, so that
notebooks use ``GaussianDiffusion(betas, ...)`` directly and the stages use one line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpm.checkpoint import check_compatible, load_checkpoint
from ddpm.config import AUTO, NCSN_LOW_DIM, NCSN_LOW_DIM_LEVELS, Params, default_setting
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError, ConfigError
from ddpm.ncsn import NoiseConditionalScoreMatching, max_pairwise_distance, num_levels_for, sigma_ladder
from ddpm.nn import build_model
from ddpm.runtime import DistInfo, dist_info, init_distributed, resolve_device, set_threads
from ddpm.schedules import get_beta_schedule
from ddpm.sde import SDE, VESDE, VPSDE, DenoisingScoreMatching, SubVPSDE

Objective = GaussianDiffusion | DenoisingScoreMatching | NoiseConditionalScoreMatching


def network_timesteps(params: Params) -> int:
    """The timesteps the network embeds: the diffusion's T (ddpm), the SDE's N (sde: it sees
    (N - 1) t, score_sde's convention) or the number of noise levels (ncsn)."""
    if params.family == "sde":
        return params.sde.num_scales
    if params.family == "ncsn":
        if params.ncsn.num_levels == AUTO:
            raise ValueError("ncsn.num_levels is still auto: resolve it from the data (data_resolved_params)")
        return params.ncsn.num_levels
    return params.diffusion.timesteps


def build_sde(params: Params, num_scales: int | None = None) -> SDE:
    """The SDE of ``family: sde`` (``num_scales``: its discretization's N, default sde.num_scales)."""
    c = params.sde
    n = c.num_scales if num_scales is None else num_scales
    if c.type == "ve":
        if c.sigma_max == AUTO:
            raise ValueError("sde.sigma_max is still auto: resolve it from the data (data_resolved_params)")
        return VESDE(c.sigma_min, c.sigma_max, n)
    return (VPSDE if c.type == "vp" else SubVPSDE)(c.beta_min, c.beta_max, n)


def ncsn_sigmas(params: Params) -> torch.Tensor:
    """NCSN's noise levels, float64 [L], descending (level 0 the largest)."""
    n = params.ncsn
    if AUTO in (n.sigma_max, n.num_levels):
        raise ValueError("ncsn.sigma_max and ncsn.num_levels must be resolved from the data (data_resolved_params)")
    return sigma_ladder(n.sigma_max, n.sigma_min, n.num_levels)


def build_objective(params: Params) -> Objective:
    """The family's training objective: the discrete diffusion's losses, continuous-time denoising
    score matching, or NCSN's noise-conditional score matching."""
    if params.family == "sde":
        c = params.sde
        return DenoisingScoreMatching(build_sde(params), weighting=c.weighting, eps=c.eps)
    if params.family == "ncsn":
        return NoiseConditionalScoreMatching(ncsn_sigmas(params))
    return build_diffusion(params)


def data_resolved_params(params: Params, train_x: torch.Tensor) -> Params:
    """``params`` with the keys of ``ddpm.config.TRAIN_RESOLVED`` left at auto derived from the
    training data ``train_x`` [N, ...] in model space: the batch is the recipe's or dataset's
    (``ddpm.config.default_setting``) capped at N, so that a small folder of images trains at its
    defaults (an explicit train.batch_size stays, and one larger than N is refused); sigma_max is
    the largest distance between two examples (NCSNv2's technique 1) and NCSN's number of levels
    follows technique 2, or is NCSN's 10 for data of dimension <= 4, where that technique has no
    answer."""
    if params.train.batch_size == AUTO:
        batch = min(default_setting(params.recipe, params.dataset, "train.batch_size"), len(train_x))
        params = dataclasses.replace(params, train=dataclasses.replace(params.train, batch_size=batch))
    if params.family == "sde" and params.sde.type == "ve" and params.sde.sigma_max == AUTO:
        sigma_max = _largest_distance(train_x, params.sde.sigma_min, "sde.sigma_min")
        return dataclasses.replace(params, sde=dataclasses.replace(params.sde, sigma_max=sigma_max))
    if params.family != "ncsn":
        return params
    n = params.ncsn
    sigma_max = _largest_distance(train_x, n.sigma_min, "ncsn.sigma_min") if n.sigma_max == AUTO else n.sigma_max
    num_levels = n.num_levels
    if num_levels == AUTO:
        dim = int(train_x[0].numel())
        num_levels = NCSN_LOW_DIM_LEVELS if dim <= NCSN_LOW_DIM else num_levels_for(sigma_max, n.sigma_min, dim)
    return dataclasses.replace(params, ncsn=dataclasses.replace(n, sigma_max=sigma_max, num_levels=num_levels))


def _largest_distance(train_x: torch.Tensor, sigma_min: float, key: str) -> float:
    distance = max_pairwise_distance(train_x)
    if not distance > sigma_min:
        raise ConfigError(f"{key}={sigma_min!r} is not accepted; expected a number below the largest distance "
                          f"between two training examples ({distance:.4g}), which sigma_max: auto takes")
    return distance


def build_diffusion(params: Params) -> GaussianDiffusion:
    d = params.diffusion
    betas = get_beta_schedule(d.beta_schedule, d.timesteps, beta_start=d.beta_start, beta_end=d.beta_end)
    return GaussianDiffusion(betas, mean_type=d.mean_type, var_type=d.var_type, loss_type=d.loss_type,
                             loss_norm=params.train.loss_norm, hybrid_lambda=params.train.hybrid_lambda)


def build_network(params: Params, meta: dict[str, Any]) -> nn.Module:
    """The denoising network for the prepared data described by ``meta``."""
    return build_model(params.model, tuple(meta["shape"]), network_timesteps(params),
                       learn_sigma=params.family == "ddpm" and params.diffusion.var_type == "learned_range")


@dataclass
class TrainedModel:
    params: Params                  # the config the model was trained with
    meta: dict[str, Any]            # the prepared data's meta.json
    diffusion: GaussianDiffusion | None  # family ddpm's discrete diffusion (None for the score families)
    network: nn.Module              # in eval mode, on ``device``
    mlflow_run_id: str | None
    device: torch.device


def load_trained(path: str | Path, current: Params, device: torch.device, use_ema: bool = True) -> TrainedModel:
    """Rebuild the trained network from a checkpoint alone, after checking that the current
    params describe the same model and diffusion (else ``CheckpointError`` lists the keys)."""
    state = load_checkpoint(path, map_location=device)
    saved = Params.from_dict(state["params"])
    check_compatible(path, saved.flatten(), current.flatten())
    network = build_network(saved, state["meta"]).to(device)
    weights = state["ema" if use_ema else "model"]
    try:
        network.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit its own config: {str(err).splitlines()[0]}"
        ) from None
    network.eval().requires_grad_(False)
    diffusion = build_diffusion(saved) if saved.family == "ddpm" else None
    return TrainedModel(saved, state["meta"], diffusion, network, state.get("mlflow_run_id"), device)


def load_for_inference(path: str | Path, params: Params, use_ema: bool) -> tuple[DistInfo, TrainedModel]:
    """Where the sample and evaluate stages start: this process's place in a torchrun job,
    its device (``train.device``, threads ``train.num_threads``) and the trained network on it."""
    dist = dist_info()
    set_threads(params.train.num_threads)
    device = init_distributed(resolve_device(params.train.device), dist)
    return dist, load_trained(path, params, device, use_ema=use_ema)
