"""Bridges from the typed config to the library's plain-argument constructors, so that
notebooks use ``GaussianDiffusion(betas, ...)`` directly and the stages use one line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpm.checkpoint import check_compatible, load_checkpoint
from ddpm.config import Params
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError
from ddpm.nn import build_model
from ddpm.runtime import DistInfo, dist_info, init_distributed, resolve_device, set_threads
from ddpm.schedules import get_beta_schedule


def build_diffusion(params: Params) -> GaussianDiffusion:
    d = params.diffusion
    betas = get_beta_schedule(d.beta_schedule, d.timesteps, beta_start=d.beta_start, beta_end=d.beta_end)
    return GaussianDiffusion(betas, mean_type=d.mean_type, var_type=d.var_type, loss_type=d.loss_type,
                             loss_norm=params.train.loss_norm, hybrid_lambda=params.train.hybrid_lambda)


def build_network(params: Params, meta: dict[str, Any]) -> nn.Module:
    """The denoising network for the prepared data described by ``meta``."""
    return build_model(params.model, tuple(meta["shape"]), params.diffusion.timesteps,
                       learn_sigma=params.diffusion.var_type == "learned_range")


@dataclass
class TrainedModel:
    params: Params                  # the config the model was trained with
    meta: dict[str, Any]            # the prepared data's meta.json
    diffusion: GaussianDiffusion
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
    return TrainedModel(saved, state["meta"], build_diffusion(saved), network, state.get("mlflow_run_id"), device)


def load_for_inference(path: str | Path, params: Params, use_ema: bool) -> tuple[DistInfo, TrainedModel]:
    """Where the sample and evaluate stages start: this process's place in a torchrun job,
    its device (``train.device``, threads ``train.num_threads``) and the trained network on it."""
    dist = dist_info()
    set_threads(params.train.num_threads)
    device = init_distributed(resolve_device(params.train.device), dist)
    return dist, load_trained(path, params, device, use_ema=use_ema)
