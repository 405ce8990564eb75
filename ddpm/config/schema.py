"""The params schema: frozen dataclasses, one per params.yaml section, and ``Params``.

Each field declares its own range where it is defined (``bounded``); ``Params.validate`` checks
those with one loop and keeps the rules that relate several keys. This module does not postpone
its annotations, so ``get_type_hints`` (the coercion's type check) finds every name it needs
already evaluated.
"""

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Self, get_type_hints

from ddpm.config.checks import (
    AUTO,
    Auto,
    Bound,
    at_least,
    bounded,
    check,
    check_bounds,
    finite_at_least,
    finite_positive,
    one_of,
    open_unit,
    section_prefix,
    unit_fraction,
)
from ddpm.config.coercion import build, coerce, reject_unknown
from ddpm.config.defaults import (
    BASE_DEFAULTS,
    DATASET_DEFAULTS,
    DEFAULT_BOUND_STRATA,
    FOLDER_IMAGE_SIZES,
    RECIPES,
    default_setting,
    recipe_settings,
)
from ddpm.config.families import FAMILIES, FamilyFacts, check_applicable, resolved_families, validate_families
from ddpm.config.quality import default_quality_metrics, validate_quality
from ddpm.config.roles import BY_PARAMS, KEY_ROLES
from ddpm.data.registry import DATASETS
from ddpm.errors import ConfigError

# The names of ddpm.schedules.SCHEDULES, whose module needs torch; params load without it
# (tests/config/test_config.py keeps the two equal).
BETA_SCHEDULES = ("linear", "quadratic", "cosine", "sigmoid", "geometric", "constant", "jsd", "sohl_dickstein")
# Keys at the top level of params.yaml besides the diffusion's.
_TOP_LEVEL = ("recipe", "dataset", "seed", "family")


@dataclass(frozen=True)
class DataConfig:
    # held-out examples; torchvision: 0 = the official test split (auto: 300; folder: a tenth of
    # its images, 1..300, the prepare stage)
    test_size: int | Auto = bounded(
        AUTO, at_least(0, " (torchvision datasets: 0 = the whole official test split)", auto=True)
    )
    # points drawn for the Swiss roll's training set (auto: 10000)
    swissroll_train_size: int | Auto = bounded(AUTO, at_least(1))
    swissroll_noise: float = bounded(0.5, finite_at_least(0))  # sklearn make_swiss_roll noise
    folder: str = "data/images"  # dataset=folder: the folder of PNG/JPEG images (class subfolders = labels)
    # dataset=folder: resized (shorter side), centre-cropped (auto: 32)
    image_size: int | Auto = bounded(AUTO, at_least(1))


@dataclass(frozen=True)
class ModelConfig:
    name: Literal["auto", "mlp", "unet", "rbf_mlp", "shufflenet_unet"] = "auto"  # auto: MLP (vectors), U-Net (images)
    base_channels: int | Auto = bounded(AUTO, at_least(1, auto=True))
    channel_mult: tuple[int, ...] | Auto = bounded(
        AUTO, Bound(lambda v: len(v) >= 1 and all(x >= 1 for x in v), "a non-empty list of integers >= 1")
    )
    num_res_blocks: int | Auto = bounded(AUTO, at_least(1, auto=True))
    attn_resolutions: tuple[int, ...] | Auto = bounded(
        AUTO, Bound(lambda v: all(x >= 1 for x in v), "a list of resolutions >= 1 (may be empty)")
    )
    dropout: float | Auto = bounded(AUTO, unit_fraction())
    num_heads: int = bounded(1, at_least(1))
    # mlp: width of each layer (auto: 128); rbf_mlp: number of RBF units
    mlp_hidden: int | Auto = bounded(AUTO, at_least(1))
    mlp_layers: int | Auto = bounded(AUTO, at_least(1))  # mlp only (auto: 3)
    time_embedding: Literal["auto", "learned", "sinusoidal"] = AUTO  # mlp, shufflenet_unet (auto: sinusoidal)


@dataclass(frozen=True)
class TrainConfig:
    steps: int | Auto = bounded(AUTO, at_least(1))  # optimizer steps
    batch_size: int | Auto = bounded(AUTO, at_least(1))  # global batch (split over ranks under torchrun)
    lr: float | Auto = bounded(AUTO, open_unit())  # Adam learning rate after warmup
    warmup_steps: int | Auto = bounded(AUTO, at_least(0))  # linear warmup from 0 to lr
    # constant: lr after warmup (Ho et al.); cosine: lr decays along half a cosine to 0 at
    # train.steps, so train.steps then changes training (a longer run cannot continue a shorter one)
    lr_schedule: Literal["auto", "constant", "cosine"] = AUTO
    # max global gradient norm; 0 disables clipping (auto: 1)
    grad_clip: float | Auto = bounded(AUTO, finite_at_least(0, " (0 disables clipping)"))
    ema_decay: float | Auto = bounded(AUTO, unit_fraction())  # EMA of the weights, evaluated and sampled by default
    loss_norm: Literal["auto", "l2", "l1"] = AUTO  # the simple loss's norm (auto: l2)
    hybrid_lambda: float = bounded(0.001, finite_at_least(0))  # weight of the vlb part in loss_type=hybrid
    hflip: bool | Auto = AUTO  # random horizontal flips (CIFAR-10 only by default)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = AUTO  # auto: see ddpm.pipeline.runtime.resolve_precision
    device: str = bounded(  # auto | cpu | cuda | cuda:N
        AUTO, Bound(lambda v: v == AUTO or v == "cpu" or v.startswith("cuda"), "auto, cpu, cuda or cuda:N")
    )
    log_every: int = bounded(50, at_least(1))  # steps between logged training metrics
    checkpoint_every: int = bounded(1000, at_least(1))  # steps between resumable checkpoints
    num_threads: int = bounded(0, at_least(0, " (0 = torch's default)"))  # torch CPU threads
    # processes the train stage launches through torchrun (DDP)
    nproc: int = bounded(1, at_least(1, " (processes on this machine)"))
    tf32: bool = True  # TF32 matmuls/convs on CUDA while training (never in evaluate)
    channels_last: bool | Auto = AUTO  # auto: off (see ddpm.training.loop.uses_channels_last); true for images
    compile: bool = False  # torch.compile the network for training
    # steps between estimates of the test bound (learning curve); 0 = off
    bound_every: int | Auto = bounded(AUTO, at_least(0, " (0 = off)", auto=True))
    bound_images: int = bounded(100, at_least(1))  # test examples in each estimate
    bound_strata: int | Auto = AUTO  # timesteps per example (stratified; auto: min(10, timesteps))


@dataclass(frozen=True)
class SampleConfig:
    num_samples: int = bounded(256, at_least(1))  # also the sample size of every quality metric and its floor
    batch_size: int = bounded(256, at_least(1))
    sampler: Literal["auto", "ancestral", "ddim", "pc", "ode", "ald"] = AUTO  # auto: the family's (FAMILIES)
    steps: int = 0  # 0 = all T steps (pc: all sde.num_scales); fewer respaces the process
    eta: float = bounded(0.0, finite_at_least(0))  # DDIM noise (1 = ancestral variance)
    clip_denoised: bool = True
    trajectory_frames: int = bounded(10, at_least(2))  # states of the reverse process kept for the strip
    use_ema: bool = True
    predictor: Literal["auto", "euler_maruyama", "reverse_diffusion", "ancestral", "none"] = AUTO  # pc only
    corrector: Literal["auto", "langevin", "annealed_langevin", "none"] = AUTO  # pc only
    snr: float | Auto = bounded(AUTO, finite_positive(auto=True))  # pc's corrector (auto: 0.16, score_sde)
    corrector_steps: int = 1  # pc's corrector steps per step


@dataclass(frozen=True)
class SdeConfig:
    """The continuous-time SDE of ``family: sde`` (Song et al. 2021); ``auto``: score_sde's
    settings for the keys that fit ``type``; keys that do not fit it stay ``auto``."""

    type: Literal["auto", "vp", "subvp", "ve"] = AUTO  # auto: vp
    beta_min: float | Auto = bounded(AUTO, finite_positive())  # vp, subvp (auto: 0.1)
    beta_max: float | Auto = AUTO  # vp, subvp (auto: 20)
    # ve (auto: 0.02, score_sde's 0.01 on [0, 1] data scaled to [-1, 1])
    sigma_min: float | Auto = bounded(AUTO, finite_positive())
    sigma_max: float | Auto = AUTO  # ve (auto: the largest pairwise distance of the training data, NCSNv2's T1)
    # N: the network's time scale N - 1 and pc's steps (auto: 1000)
    num_scales: int | Auto = bounded(AUTO, at_least(2))
    weighting: Literal["auto", "sigma2", "g2"] = AUTO  # the loss's lambda(t) (auto: sigma2)
    # t ~ U(eps, 1) in training (auto: 1e-5)
    eps: float | Auto = bounded(AUTO, open_unit("a number in (0, 1): training draws t ~ U(eps, 1)"))


@dataclass(frozen=True)
class NcsnConfig:
    """The noise levels and annealed Langevin dynamics of ``family: ncsn`` (Song & Ermon 2019, 2020)."""

    sigma_max: float | Auto = AUTO  # auto: the largest pairwise distance of the training data (T1)
    # auto: 0.02 (the references' 0.01 on [0, 1] data, scaled to [-1, 1])
    sigma_min: float | Auto = bounded(AUTO, finite_positive())
    # auto: NCSNv2's T2 rule; data of dimension <= 4: 10 (NCSN)
    num_levels: int | Auto = bounded(AUTO, at_least(2, auto=True))
    # auto: ceil(1000 / num_levels) (NCSN's 100 at 10 levels, NCSNv2's 5 at 232)
    steps_per_level: int | Auto = bounded(AUTO, at_least(1, auto=True))
    # ALD's eps (auto: NCSNv2's T4 rule for steps_per_level)
    step_lr: float | Auto = bounded(AUTO, finite_positive(auto=True))
    denoise: bool | Auto = AUTO  # the final denoising step (auto: true, NCSNv2)
    init: Literal["auto", "uniform", "gaussian"] = AUTO  # ALD's start (auto: uniform, as the references)


@dataclass(frozen=True)
class OdeConfig:
    """The probability-flow ODE: its likelihood (evaluate) and its sampler (sample.sampler=ode)."""

    rtol: float = bounded(1e-5, finite_positive(" (the adaptive solver's tolerance)"))
    atol: float = bounded(1e-5, finite_positive(" (the adaptive solver's tolerance)"))
    # the likelihood integrates from t = eps (score_sde)
    eps: float = bounded(1e-5, open_unit("a number in (0, 1): the likelihood integrates from t = eps to 1"))
    # the sampler stops at t = sample_eps (auto: the SDE's, 1e-3 VP / 1e-5 VE)
    sample_eps: float | Auto = bounded(AUTO, open_unit("a number in (0, 1) or auto"))
    # the sampler's last step: one noise-free reverse-diffusion step at t = sample_eps (score_sde's
    # noise_removal); false: the ODE's x(eps)
    denoise: bool = True
    divergence: Literal["auto", "exact", "hutchinson"] = AUTO  # auto: exact for vectors, Hutchinson for images
    # test images in the ODE likelihood (families ddpm and sde); 0: none
    num_images: int = bounded(20, at_least(0, " (0: no ODE likelihood)"))
    repeats: int = bounded(1, at_least(1))  # dequantization draws per image (score_sde's test bpd: 5)


@dataclass(frozen=True)
class EvaluateConfig:
    # test images in the bound; 0 = the whole test split
    num_images: int = bounded(0, at_least(0, " (0 = the whole test split)"))
    batch_size: int = bounded(512, at_least(1))  # examples per network call (timesteps are batched)
    clip_denoised: bool = True  # images only; recorded with every reported number
    use_ema: bool = True


@dataclass(frozen=True)
class ClassifierConfig:
    """The small classifier whose features score sample quality on labelled image datasets."""

    # optimizer steps (auto: per dataset; 0 for data without labels)
    steps: int | Auto = bounded(AUTO, at_least(0, " (0: no classifier)", auto=True))
    batch_size: int = bounded(128, at_least(1))
    lr: float = bounded(1e-3, open_unit())  # Adam
    width: int = bounded(32, at_least(1))  # channels of the first convolution
    feature_dim: int = bounded(64, at_least(1))  # penultimate features: the space the quality metrics work in


@dataclass(frozen=True)
class QualityConfig:
    """Sample-quality metrics of the sample stage's samples, and of the sweep's settings."""

    metrics: tuple[str, ...] | Auto = AUTO  # families: classifier | inception | raw (auto: per dataset)
    sweep: tuple[str, ...] = ("ddim:10", "ddim:20", "ddim:50", "ddim:100")  # sampler:steps, scored vs NFE
    batch_size: int = bounded(256, at_least(1))  # network batch for the sweep's samples and the features
    kid_subset_size: int | Auto = AUTO  # samples per KID subset (auto: sample.num_samples // 5 in 2..1000)
    kid_subsets: int | Auto = AUTO  # auto: sample.num_samples // kid_subset_size, disjoint subsets
    nearest_k: int = bounded(5, at_least(1))  # neighbours for precision/recall and density/coverage
    inception_weights: str = ""  # path to torch-fidelity's Inception weights; empty: Inception skipped


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = bounded("ddpm", Bound(lambda v: bool(v.strip()), "a non-empty name"))
    tracking_uri: str = ""  # empty: sqlite:///mlflow.db at the repository root


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion's keys (top level in params.yaml); ``auto``: the recipe's, else Ho et al.'s."""

    beta_schedule: str = bounded(AUTO, one_of(BETA_SCHEDULES))
    timesteps: int | Auto = bounded(AUTO, at_least(1))
    beta_start: float | Auto = bounded(AUTO, open_unit("a number in the open interval (0, 1)"))
    beta_end: float | Auto = bounded(AUTO, open_unit("a number in the open interval (0, 1)"))
    mean_type: Literal["auto", "eps", "x0", "v"] = AUTO
    var_type: Literal["auto", "fixed_small", "fixed_large", "learned_range"] = AUTO
    loss_type: Literal["auto", "simple", "vlb", "hybrid"] = AUTO


@dataclass(frozen=True)
class Params:
    recipe: str = "ddpm"  # a system of ddpm.config.defaults.RECIPES: fills the keys left at auto
    dataset: str = bounded(AUTO, one_of(DATASETS))  # auto: the recipe's dataset, else digits
    seed: int = bounded(0, at_least(0))
    family: Literal["ddpm", "sde", "ncsn"] = "ddpm"  # discrete DDPM, continuous score SDE, or NCSN
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    sde: SdeConfig = field(default_factory=SdeConfig)
    ncsn: NcsnConfig = field(default_factory=NcsnConfig)
    ode: OdeConfig = field(default_factory=OdeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    @property
    def family_facts(self) -> FamilyFacts:
        """What this config's family has (``FAMILIES``): its samplers, a bound, an ODE likelihood."""
        return FAMILIES[self.family]

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, raw: dict[str, Any], resolve: bool = True) -> Self:
        """Build and validate from the params.yaml mapping (top-level diffusion keys flat)."""
        if not isinstance(raw, dict):
            raise ConfigError(f"params must be a mapping of keys to values, got {type(raw).__name__}")
        top = {f.name for f in fields(DiffusionConfig)} | set(_TOP_LEVEL)
        sections = [f.name for f in fields(cls) if f.name not in (*_TOP_LEVEL, "diffusion")]
        reject_unknown(raw, top | set(sections), prefix="")
        top_level = {k: v for k, v in raw.items() if k in top and k not in _TOP_LEVEL}
        kwargs: dict[str, Any] = {"diffusion": build(DiffusionConfig, top_level, "")}
        hints = get_type_hints(cls)
        for key in _TOP_LEVEL:
            if key in raw:
                kwargs[key] = coerce(key, raw[key], hints[key])
        for name in sections:
            section = raw.get(name, {})
            if section is None:
                section = {}
            if not isinstance(section, dict):
                raise ConfigError(f"{name}: expected a section of keys, got {section!r}")
            kwargs[name] = build(hints[name], section, section_prefix(name))
        params = cls(**kwargs)
        # Ranges are checked on the resolved values (an explicit value is kept as given, so a
        # message still names the key and the value the user wrote).
        resolved = params.resolved()
        resolved.validate()
        return resolved if resolve else params

    def to_dict(self) -> dict[str, Any]:
        """The params.yaml layout (top-level diffusion keys), lists for tuples."""
        out: dict[str, Any] = {key: getattr(self, key) for key in _TOP_LEVEL}
        out.update(_plain(dataclasses.asdict(self.diffusion)))
        for f in fields(self):
            if f.name not in (*_TOP_LEVEL, "diffusion"):
                out[f.name] = _plain(dataclasses.asdict(getattr(self, f.name)))
        return out

    def flatten(self) -> dict[str, Any]:
        """Dotted keys as in ``dvc exp run -S`` (``train.lr``), for MLflow params."""
        flat: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                flat.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        return flat

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Refuse, before any expensive work: a key the family does not read set, a value outside
        its field's bounds (declared on the fields), then what the rules between keys forbid."""
        check_applicable(self)
        check_bounds(self)
        d, t, s = self.diffusion, self.train, self.sample
        if self.family_facts.has_diffusion:
            if d.var_type == "learned_range":
                check(
                    d.loss_type in ("hybrid", "vlb"),
                    "loss_type",
                    d.loss_type,
                    "'hybrid' or 'vlb' with var_type=learned_range (the simple loss does not train the variance)",
                )
            else:
                # The hybrid loss stops the vlb part's gradient on the mean (Nichol & Dhariwal
                # 2021, sec. 3.1), so with a fixed variance it would silently train the simple loss.
                check(
                    d.loss_type in ("simple", "vlb"),
                    "loss_type",
                    d.loss_type,
                    f"'simple' or 'vlb' with var_type={d.var_type} (the hybrid loss's vlb part trains only "
                    "a learned variance: use var_type=learned_range)",
                )
            if d.beta_schedule == "jsd":
                check(
                    d.mean_type != "eps",
                    "mean_type",
                    d.mean_type,
                    "'x0' or 'v' with beta_schedule=jsd (its last beta is 1, so eps cannot recover x0)",
                )
        _validate_image_folder(self)
        check(
            1 <= t.bound_strata <= d.timesteps,
            "train.bound_strata",
            t.bound_strata,  # auto is resolved
            f"an integer in 1..timesteps={d.timesteps}",
        )
        if self.family_facts.section == "sde":
            check(s.steps >= 0, "sample.steps", s.steps, "an integer >= 0 (0 = sde.num_scales)")
        else:
            check(
                0 <= s.steps <= d.timesteps,
                "sample.steps",
                s.steps,
                f"an integer in 0..timesteps={d.timesteps} (0 = all)",
            )
        validate_quality(self)
        validate_families(self)

    def resolved(self) -> Self:
        """Replace every ``auto`` that ``KEY_ROLES`` says loading resolves (``BY_PARAMS``; the
        stages resolve the rest from the machine, the data or the stored noise levels): an
        explicit value stays, else the recipe's setting, else the dataset's default, else
        ``BASE_DEFAULTS`` (ddpm.config.defaults)."""
        check(self.recipe in RECIPES, "recipe", self.recipe, f"one of {', '.join(RECIPES)}")
        recipe = recipe_settings(self.recipe)
        dataset = self.dataset if self.dataset != AUTO else recipe.get("dataset", BASE_DEFAULTS["dataset"])
        check(dataset in DATASETS, "dataset", dataset, f"one of {', '.join(DATASETS)} or auto")

        def fill(section: Any, prefix: str) -> Any:
            updates = {}
            for f in fields(section):
                key = prefix + f.name
                if getattr(section, f.name) == AUTO and KEY_ROLES[key].auto == BY_PARAMS:
                    value = default_setting(self.recipe, dataset, key)
                    if value != AUTO:
                        updates[f.name] = value
            return dataclasses.replace(section, **updates)

        diffusion = fill(self.diffusion, "")
        if not self.family_facts.has_diffusion:
            # The score families train an eps network with their own objective: the DDPM's
            # parametrisation, reverse variance and loss do not apply and stay auto.
            diffusion = dataclasses.replace(
                diffusion,
                mean_type=self.diffusion.mean_type,
                var_type=self.diffusion.var_type,
                loss_type=self.diffusion.loss_type,
            )
        sections = {"diffusion": diffusion, **resolved_families(self, dataset, diffusion.timesteps)}
        for name in ("data", "model", "train", "classifier"):
            sections[name] = fill(getattr(self, name), f"{name}.")
        if sections["train"].bound_strata == AUTO:  # ten strata, or every timestep of a shorter chain
            strata = min(DEFAULT_BOUND_STRATA, sections["diffusion"].timesteps)
            sections["train"] = dataclasses.replace(sections["train"], bound_strata=strata)
        q, n = self.quality, self.sample.num_samples
        # KID's usual 1000-sample subsets, or five disjoint subsets when there are fewer samples.
        subset = min(1000, max(2, n // 5)) if q.kid_subset_size == AUTO else q.kid_subset_size
        sections["quality"] = dataclasses.replace(
            q,
            metrics=default_quality_metrics(dataset) if q.metrics == AUTO else q.metrics,
            kid_subset_size=subset,
            kid_subsets=n // subset if q.kid_subsets == AUTO else q.kid_subsets,
        )
        return dataclasses.replace(self, dataset=dataset, **sections)


def _validate_image_folder(params: Params) -> None:
    """For dataset=folder with the default U-Net, an image size it can take (the folder itself is
    checked by the prepare stage, the one that reads it)."""
    size, m, default = params.data.image_size, params.model, DATASET_DEFAULTS["folder"]
    default_levels = (m.channel_mult, m.attn_resolutions) == (
        default["model.channel_mult"],
        default["model.attn_resolutions"],
    )
    if params.dataset == "folder" and m.name == "unet" and default_levels:
        check(
            size in FOLDER_IMAGE_SIZES,
            "data.image_size",
            size,
            f"one of {', '.join(map(str, FOLDER_IMAGE_SIZES))} for dataset=folder with the default U-Net "
            "(it halves the image 3 times and attends at 16 x 16), or set model.channel_mult and "
            "model.attn_resolutions for this size",
        )


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return list(obj)
    return obj
