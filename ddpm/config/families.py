"""The families (``family: ddpm | sde | ncsn``): what each has, which ``auto`` it resolves, and
which keys it refuses.

``FAMILIES`` declares each family's facts once, for the stages to ask instead of comparing
family names. Each family resolves the ``auto`` keys that apply to it (``sample.sampler`` and
the pc sampler's keys, the ``sde`` section for its ``sde.type``, the ``ncsn`` section) and
leaves the keys of the other families ``auto``; a key set explicitly that the family or the SDE
type does not use is refused, and so is a sampler the family cannot run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from ddpm.config.checks import AUTO, check
from ddpm.config.defaults import SDE_COMMON, SDE_SAMPLING_EPS, SDE_TYPE_KEYS, SIGMA_MIN
from ddpm.data.registry import DATASET_INFO

if TYPE_CHECKING:
    from ddpm.config.schema import Params


# fmt: off
@dataclass(frozen=True)
class FamilyFacts:
    """What the rest of the code may ask of a family, declared once (``FAMILIES``)."""

    name: str
    samplers: tuple[str, ...]    # what sample.sampler accepts; the first is its auto
    section: str | None          # the params section only this family reads (ddpm: none, its keys are top-level)
    has_diffusion: bool          # a discrete GaussianDiffusion: ancestral, DDIM, the quality sweep
    has_bound: bool              # the variational bound (the evaluate stage, the train stage's probe)
    has_ode_likelihood: bool     # the probability-flow ODE likelihood


# The samplers each family can run: the discrete DDPM's own two and, through its VP-type SDE
# (ddpm.score.sde.sde_from_diffusion), the score samplers; a continuous SDE's score; NCSN's
# annealed Langevin dynamics, which defines no tractable likelihood.
FAMILIES: dict[str, FamilyFacts] = {
    "ddpm": FamilyFacts("ddpm", ("ancestral", "ddim", "pc", "ode"), None, has_diffusion=True, has_bound=True,
                        has_ode_likelihood=True),
    "sde": FamilyFacts("sde", ("pc", "ode"), "sde", has_diffusion=False, has_bound=False, has_ode_likelihood=True),
    "ncsn": FamilyFacts("ncsn", ("ald",), "ncsn", has_diffusion=False, has_bound=False, has_ode_likelihood=False),
}
FAMILY_SAMPLERS: dict[str, tuple[str, ...]] = {name: f.samplers for name, f in FAMILIES.items()}
# fmt: on


def _fill_auto(section: Any, values: dict[str, Any]) -> Any:
    """``section`` with its ``auto`` fields named in ``values`` set to them."""
    return dataclasses.replace(section, **{k: v for k, v in values.items() if getattr(section, k) == AUTO})


def resolved_families(params: Params, dataset: str, timesteps: int) -> dict[str, Any]:
    """The sections sample, sde, ncsn and ode with the ``auto`` that apply to ``params.family``
    filled in; keys of other families (and of other SDE types) stay ``auto``."""
    facts, sde, ncsn, s, ode = params.family_facts, params.sde, params.ncsn, params.sample, params.ode
    sde_type = None
    if facts.section == "sde":
        sde_type = "vp" if sde.type == AUTO else sde.type
        sde = _fill_auto(dataclasses.replace(sde, type=sde_type), {**SDE_TYPE_KEYS.get(sde_type, {}), **SDE_COMMON})
    if facts.section == "ncsn":
        ncsn = _fill_auto(ncsn, {"sigma_min": SIGMA_MIN, "denoise": True, "init": "uniform"})
    sampler = facts.samplers[0] if s.sampler == AUTO else s.sampler
    s = dataclasses.replace(s, sampler=sampler)
    if sampler == "pc":
        variance_exploding = sde_type == "ve"
        # score_sde's configs: VE runs reverse diffusion with a corrector, VP and sub-VP Euler-Maruyama
        # alone; the corrector is annealed Langevin (pc.py: per-example Langevin is biased in low dimension).
        s = _fill_auto(
            s,
            {
                "predictor": "reverse_diffusion" if variance_exploding else "euler_maruyama",
                "corrector": "annealed_langevin" if variance_exploding else "none",
                "snr": 0.16,
            },
        )
    if facts.has_ode_likelihood:  # the ODE's sampler and its likelihood read these
        # ddpm: the first knot 1 / T (a bad timesteps is refused by validate).
        eps = SDE_SAMPLING_EPS[sde_type] if sde_type else 1.0 / max(timesteps, 1)
        vector = DATASET_INFO[dataset].kind == "vector"
        ode = _fill_auto(ode, {"sample_eps": eps, "divergence": "exact" if vector else "hutchinson"})
    return {"sample": s, "sde": sde, "ncsn": ncsn, "ode": ode}


def _set_keys(section: Any) -> list[str]:
    return [f.name for f in fields(section) if getattr(section, f.name) != AUTO]


def check_applicable(params: Params) -> None:
    """Keys that the family, its SDE type or the sampler does not read must stay ``auto``
    (checked before the fields' bounds, so that such a key is refused for being set at all)."""
    family, facts, s = params.family, params.family_facts, params.sample
    if not facts.has_diffusion:
        for key in ("mean_type", "var_type", "loss_type"):
            check(
                getattr(params.diffusion, key) == AUTO,
                key,
                getattr(params.diffusion, key),
                f"auto with family={family} (it trains a noise-predicting network with its own "
                "objective; the key belongs to family=ddpm)",
            )
    for owner in FAMILIES.values():
        if owner.section is not None and owner is not facts:
            section = getattr(params, owner.section)
            for key in _set_keys(section):
                check(
                    False,
                    f"{owner.section}.{key}",
                    getattr(section, key),
                    f"auto with family={family} (the {owner.section} section belongs to family={owner.name})",
                )
    if facts.section == "sde":
        sde = params.sde
        fitting = set(SDE_TYPE_KEYS[sde.type])
        for key in ("beta_min", "beta_max", "sigma_min", "sigma_max"):
            if key not in fitting:
                owners = ", ".join(t for t, keys in SDE_TYPE_KEYS.items() if key in keys)
                check(
                    getattr(sde, key) == AUTO,
                    f"sde.{key}",
                    getattr(sde, key),
                    f"auto with sde.type={sde.type} (the key belongs to sde.type {owners})",
                )
    if s.sampler != "pc":
        for key in ("predictor", "corrector", "snr"):
            check(getattr(s, key) == AUTO, f"sample.{key}", getattr(s, key), "auto unless sample.sampler=pc")


def validate_families(params: Params) -> None:
    """The sampler against the family, and the rules relating the keys of the sde and ncsn sections."""
    family, facts, s = params.family, params.family_facts, params.sample
    check(
        s.sampler in facts.samplers,
        "sample.sampler",
        s.sampler,
        f"a sampler family={family} can run: {', '.join(facts.samplers)} (or auto)",
    )
    if s.sampler == "pc":
        if facts.has_diffusion and s.predictor in ("reverse_diffusion", "ancestral"):
            T = params.diffusion.timesteps
            check(
                s.steps in (0, T),
                "sample.steps",
                s.steps,
                f"0 or timesteps={T} with predictor={s.predictor} (it walks the diffusion's own T steps; "
                "euler_maruyama takes any number)",
            )
        # Not a field bound: other samplers ignore it, whatever it holds.
        check(s.corrector_steps >= 1, "sample.corrector_steps", s.corrector_steps, "an integer >= 1")
    if facts.section == "sde":
        _validate_sde(params)
    if facts.section == "ncsn":
        _check_sigma_max("ncsn", params.ncsn.sigma_max, params.ncsn.sigma_min)


def _check_sigma_max(section: str, sigma_max: float | str, sigma_min: float) -> None:
    """A variance-exploding ladder's top (VE's, NCSN's) above its bottom, unless auto."""
    if sigma_max != AUTO:
        check(
            math.isfinite(sigma_max) and sigma_max > sigma_min,
            f"{section}.sigma_max",
            sigma_max,
            f"a finite number > {section}.sigma_min={sigma_min}, or auto",
        )


def _validate_sde(params: Params) -> None:
    sde, s = params.sde, params.sample
    if sde.type == "ve":
        _check_sigma_max("sde", sde.sigma_max, sde.sigma_min)
    else:
        check(
            math.isfinite(sde.beta_max) and sde.beta_max > sde.beta_min,
            "sde.beta_max",
            sde.beta_max,
            f"a finite number > sde.beta_min={sde.beta_min}",
        )
    if sde.type == "vp":
        # VP's discrete betas beta_max / N must stay below 1.
        check(
            sde.num_scales > sde.beta_max,
            "sde.num_scales",
            sde.num_scales,
            f"an integer > sde.beta_max={sde.beta_max} (VP's discrete betas beta_max / N must be < 1)",
        )
    if s.sampler == "pc" and s.predictor in ("reverse_diffusion", "ancestral"):
        if sde.type == "subvp":
            check(
                s.predictor != "ancestral",
                "sample.predictor",
                s.predictor,
                "euler_maruyama, reverse_diffusion or none with sde.type=subvp (sub-VP has no ancestral chain)",
            )
        steps = s.steps or sde.num_scales
        if sde.type == "vp":
            check(
                steps > sde.beta_max,
                "sample.steps",
                s.steps,
                f"0 or an integer > sde.beta_max={sde.beta_max} with predictor={s.predictor} "
                "(it walks VP's discrete chain of that many steps, whose betas beta_max / steps must be < 1)",
            )
