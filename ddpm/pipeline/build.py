"""Everything built from the typed config, family by family: the network, the objective, the
diffusion or SDE, the keys derived from the training data, the score the samplers and the ODE
likelihood use, and a trained model rebuilt from its checkpoint. Each family answers these in
one class (``DdpmFamily``, ``SdeFamily``, ``NcsnFamily``); what a family *has* (samplers, a
bound, an ODE likelihood) is declared in ``ddpm.config.FAMILIES``. Notebooks use the library's
plain-argument constructors (``GaussianDiffusion(betas, ...)``) directly."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ddpm.config import AUTO, NCSN_LOW_DIM, NCSN_LOW_DIM_LEVELS, TRAIN_RESOLVED, Params, default_setting
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError, ConfigError
from ddpm.nn import build_model
from ddpm.pipeline.checkpoint import check_compatible, load_checkpoint
from ddpm.pipeline.runtime import DistInfo, dist_info, init_distributed, resolve_device, set_threads
from ddpm.schedules import get_beta_schedule
from ddpm.score.model import ScoreModel
from ddpm.score.ncsn import (
    NoiseConditionalScoreMatching,
    langevin_step_size,
    max_pairwise_distance,
    num_levels_for,
    score_from_ncsn,
    sigma_ladder,
)
from ddpm.score.sde import (
    SDE,
    VESDE,
    VPSDE,
    DenoisingScoreMatching,
    SubVPSDE,
    score_from_diffusion,
    score_from_eps_model,
)

# NCSN's budget of network evaluations: steps_per_level auto is ceil(NCSN_BUDGET / L), which is
# NCSN's 100 steps at its 10 levels and NCSNv2's 5 at CIFAR-10's 232, and about DDPM's 1000 steps.
NCSN_BUDGET = 1000

if TYPE_CHECKING:
    from ddpm.training.objectives import Objective


class DdpmFamily:
    """The discrete DDPM: a GaussianDiffusion over T timesteps, scored as its VP-type SDE."""

    @staticmethod
    def network_timesteps(params: Params) -> int:
        return params.diffusion.timesteps

    @staticmethod
    def objective(params: Params, num_levels: int | None) -> Objective:
        # Imported here: only training builds an objective, and the sample and evaluate stages,
        # which import this module, must not depend on (and rerun for) the training code.
        from ddpm.training.objectives import DiffusionObjective

        return DiffusionObjective(build_diffusion(params), num_levels)

    @staticmethod
    def learn_sigma(params: Params) -> bool:
        return params.diffusion.var_type == "learned_range"

    @staticmethod
    def resolve_from_data(params: Params, train_x: torch.Tensor) -> Params:
        return params

    @staticmethod
    def score_model(params: Params, network: nn.Module, diffusion: GaussianDiffusion | None,
                    num_steps: int | None = None) -> ScoreModel:
        score = score_from_diffusion(diffusion, network)
        return ScoreModel("ddpm", sde=score.sde, score=score)


class SdeFamily:
    """A continuous score SDE (VP, sub-VP, VE); the network sees (N - 1) t, score_sde's convention."""

    @staticmethod
    def network_timesteps(params: Params) -> int:
        return params.sde.num_scales

    @staticmethod
    def objective(params: Params, num_levels: int | None) -> Objective:
        c = params.sde
        return DenoisingScoreMatching(build_sde(params), weighting=c.weighting, eps=c.eps)

    @staticmethod
    def learn_sigma(params: Params) -> bool:
        return False

    @staticmethod
    def resolve_from_data(params: Params, train_x: torch.Tensor) -> Params:
        if params.sde.type == "ve" and params.sde.sigma_max == AUTO:
            sigma_max = _largest_distance(train_x, params.sde.sigma_min, "sde.sigma_min")
            return dataclasses.replace(params, sde=dataclasses.replace(params.sde, sigma_max=sigma_max))
        return params

    @staticmethod
    def score_model(params: Params, network: nn.Module, diffusion: GaussianDiffusion | None,
                    num_steps: int | None = None) -> ScoreModel:
        """The score on the SDE discretized in ``num_steps`` (default its N): a sampler walking
        fewer steps walks its own discretization; the score keeps the trained time scale."""
        trained_sde = build_sde(params)
        sde = trained_sde if num_steps in (None, trained_sde.N) else build_sde(params, num_scales=num_steps)
        # The network saw (N - 1) t in training (ddpm.score.sde.DenoisingScoreMatching's time_scale).
        return ScoreModel("sde", sde=sde, score=score_from_eps_model(trained_sde, network, trained_sde.N - 1))


class NcsnFamily:
    """NCSN: a noise-conditional network over a geometric ladder of L noise levels."""

    @staticmethod
    def network_timesteps(params: Params) -> int:
        if params.ncsn.num_levels == AUTO:
            raise ValueError("ncsn.num_levels is still auto: resolve it from the data (data_resolved_params)")
        return params.ncsn.num_levels

    @staticmethod
    def objective(params: Params, num_levels: int | None) -> Objective:
        return NoiseConditionalScoreMatching(ncsn_sigmas(params))

    @staticmethod
    def learn_sigma(params: Params) -> bool:
        return False

    @staticmethod
    def resolve_from_data(params: Params, train_x: torch.Tensor) -> Params:
        """sigma_max: the largest distance between two examples (NCSNv2's technique 1); the number
        of levels by technique 2, or NCSN's 10 for data of dimension <= 4, where it has no answer."""
        n = params.ncsn
        sigma_max = _largest_distance(train_x, n.sigma_min, "ncsn.sigma_min") if n.sigma_max == AUTO else n.sigma_max
        num_levels = n.num_levels
        if num_levels == AUTO:
            dim = int(train_x[0].numel())
            num_levels = NCSN_LOW_DIM_LEVELS if dim <= NCSN_LOW_DIM else num_levels_for(sigma_max, n.sigma_min, dim)
        return dataclasses.replace(params, ncsn=dataclasses.replace(n, sigma_max=sigma_max, num_levels=num_levels))

    @staticmethod
    def score_model(params: Params, network: nn.Module, diffusion: GaussianDiffusion | None,
                    num_steps: int | None = None) -> ScoreModel:
        sigmas = ncsn_sigmas(params)
        return ScoreModel("ncsn", sigmas=sigmas, level_score=score_from_ncsn(sigmas, network))


FAMILY_BUILDERS = {"ddpm": DdpmFamily, "sde": SdeFamily, "ncsn": NcsnFamily}


def family(params: Params) -> type[DdpmFamily] | type[SdeFamily] | type[NcsnFamily]:
    """The builder of ``params.family``."""
    return FAMILY_BUILDERS[params.family]


def network_timesteps(params: Params) -> int:
    """The timesteps the network embeds: the diffusion's T (ddpm), the SDE's N (sde: it sees
    (N - 1) t, score_sde's convention) or the number of noise levels (ncsn)."""
    return family(params).network_timesteps(params)


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


def build_objective(params: Params, num_levels: int | None = None) -> Objective:
    """The family's training objective (``ddpm.training.objectives.Objective``): the discrete
    diffusion's losses (with the data's ``num_levels`` grey levels for its decoder term; None for
    continuous data), continuous-time denoising score matching, or NCSN's noise-conditional score
    matching."""
    return family(params).objective(params, num_levels)


def data_resolved_params(params: Params, train_x: torch.Tensor) -> Params:
    """``params`` with the keys of ``ddpm.config.TRAIN_RESOLVED`` left at auto derived from the
    training data ``train_x`` [N, ...] in model space: the batch is the recipe's or dataset's
    (``ddpm.config.default_setting``) capped at N, so that a small folder of images trains at its
    defaults (an explicit train.batch_size stays, and one larger than N is refused); the family's
    own keys by its ``resolve_from_data`` (NCSNv2's rules for sigma_max and the levels)."""
    if params.train.batch_size == AUTO:
        batch = min(default_setting(params.recipe, params.dataset, "train.batch_size"), len(train_x))
        params = dataclasses.replace(params, train=dataclasses.replace(params.train, batch_size=batch))
    return family(params).resolve_from_data(params, train_x)


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
                       learn_sigma=family(params).learn_sigma(params))


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
    diffusion = build_diffusion(saved) if saved.family_facts.has_diffusion else None
    return TrainedModel(saved, state["meta"], diffusion, network, state.get("mlflow_run_id"), device)


def load_for_inference(path: str | Path, params: Params, use_ema: bool) -> tuple[DistInfo, TrainedModel]:
    """Where the sample and evaluate stages start: this process's place in a torchrun job,
    its device (``train.device``, threads ``train.num_threads``) and the trained network on it."""
    dist = dist_info()
    set_threads(params.train.num_threads)
    device = init_distributed(resolve_device(params.train.device), dist)
    return dist, load_trained(path, params, device, use_ema=use_ema)


def score_model(trained: TrainedModel, num_steps: int | None = None) -> ScoreModel:
    """The score of a trained model of any family (its network in eval mode, on its device);
    ``num_steps``: the discretization a PC sampler walks (sde: its own SDE of that N)."""
    p = trained.params
    return family(p).score_model(p, trained.network, trained.diffusion, num_steps)


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


def pc_settings(params: Params, num_scales: int) -> dict[str, Any]:
    """The PC sampler's settings; ``num_steps``: sample.steps, 0 for the model's own N."""
    s = params.sample
    return {"predictor": s.predictor, "corrector": s.corrector, "snr": s.snr, "corrector_steps": s.corrector_steps,
            "num_steps": s.steps or num_scales}


def score_sampler_settings(params: Params, num_scales: int) -> dict[str, Any]:
    """The resolved settings of the score sampler ``params.sample.sampler``: pc's (on the
    model's ``num_scales`` unless sample.steps says otherwise), ald's or the ODE's."""
    sampler = params.sample.sampler
    if sampler == "pc":
        return pc_settings(params, num_scales)
    return ald_settings(params) if sampler == "ald" else ode_settings(params)


def score_sampler(params: Params, trained: TrainedModel) -> tuple[ScoreModel, dict[str, Any]]:
    """The trained model as a score and the resolved settings of ``params.sample.sampler`` (pc,
    ode or ald), the train stage's data-derived keys taken from the checkpoint, for
    ``ddpm.sampling.score_samplers.draw_score_samples``; a PC sampler walks its own number of
    steps."""
    run = with_trained_keys(params, trained.params)
    settings = score_sampler_settings(run, network_timesteps(trained.params))
    return score_model(trained, settings.get("num_steps")), settings
