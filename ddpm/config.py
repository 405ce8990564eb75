"""params.yaml -> typed, validated, frozen dataclasses.

The diffusion keys live at the top level of params.yaml (``dvc exp run -S
beta_schedule=sigmoid``); the rest sit in sections ``data``, ``model``, ``train``,
``sample``, ``evaluate``, ``mlflow``. Every key is checked when the file is loaded: an
unknown key (with the closest known key suggested), a wrong type or an out-of-range value
raises ``ConfigError`` naming the key, the value and what is accepted, before any
expensive work starts.

Fields whose value is ``auto`` take the ``recipe``'s setting (``ddpm.recipes``), else a
per-dataset default (``DATASET_DEFAULTS``: DDPM's settings for CIFAR-10, fast ones for
digits), else ``ddpm.recipes.BASE_DEFAULTS``; ``load_params`` resolves them, except
``train.precision``, ``train.device`` and ``train.channels_last`` (``RUNTIME_RESOLVED``),
which depend on the machine: the train stage resolves those and stores what it used.

Families (``family: ddpm | sde | ncsn``): each resolves the ``auto`` keys that apply to it
(``sample.sampler`` and the pc sampler's keys, the ``sde`` section for its ``sde.type``, the
``ncsn`` section) and leaves the keys of the other families ``auto``; a key set explicitly that
the family or the SDE type does not use is refused, and so is a sampler the family cannot run
(``FAMILY_SAMPLERS``). ``TRAIN_RESOLVED`` keys (NCSNv2's data-derived sigma_max and number of
levels, and ``train.batch_size``, the default capped at the training split) are resolved by the
train stage from the training data and stored with the model; ``SAMPLE_RESOLVED`` keys (NCSN's
Langevin steps and step size) by the sample stage; ``data.test_size`` by the prepare stage
(``PREPARE_RESOLVED``: a tenth of an image folder), which records it in ``meta.json``.

Numbers: params files are read with ``ParamsLoader``, which adds YAML 1.2's float
spellings (``1e-05``, ``1E-5``, ``.5``, ``5.``) to PyYAML's YAML 1.1 ones, because
``dvc exp run -S beta_start=0.00001`` writes ``1e-05``, a string to YAML 1.1. Integer
fields also take an integral float (``train.steps: 8e5`` is 800000; 1.5 is refused). A
quoted value (``"1e-5"``) stays a string and is refused where a number is expected:
quotes say the value is text.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from ddpm.data.registry import DATASET_INFO, DATASETS
from ddpm.errors import ConfigError
from ddpm.recipes import BASE_DEFAULTS, RECIPES, recipe_settings
from ddpm.schedules import SCHEDULES

AUTO = "auto"
Auto = Literal["auto"]
DEFAULT_BOUND_STRATA = 10
# Keys at the top level of params.yaml besides the diffusion's.
_TOP_LEVEL = ("recipe", "dataset", "seed", "family")


@dataclass(frozen=True)
class DataConfig:
    test_size: int | Auto = AUTO      # held-out examples; torchvision: 0 = the official test split (auto: 300;
                                      # folder: a tenth of its images, 1..300, the prepare stage)
    swissroll_train_size: int | Auto = AUTO  # points drawn for the Swiss roll's training set (auto: 10000)
    swissroll_noise: float = 0.5       # sklearn make_swiss_roll noise
    folder: str = "data/images"        # dataset=folder: the folder of PNG/JPEG images (class subfolders = labels)
    image_size: int | Auto = AUTO      # dataset=folder: resized (shorter side), centre-cropped (auto: 32)


@dataclass(frozen=True)
class ModelConfig:
    name: Literal["auto", "mlp", "unet", "rbf_mlp", "shufflenet_unet"] = "auto"  # auto: MLP (vectors), U-Net (images)
    base_channels: int | Auto = AUTO
    channel_mult: tuple[int, ...] | Auto = AUTO
    num_res_blocks: int | Auto = AUTO
    attn_resolutions: tuple[int, ...] | Auto = AUTO
    dropout: float | Auto = AUTO
    num_heads: int = 1
    mlp_hidden: int | Auto = AUTO       # mlp: width of each layer (auto: 128); rbf_mlp: number of RBF units
    mlp_layers: int | Auto = AUTO       # mlp only (auto: 3)
    time_embedding: Literal["auto", "learned", "sinusoidal"] = AUTO  # mlp, shufflenet_unet (auto: sinusoidal)


@dataclass(frozen=True)
class TrainConfig:
    steps: int | Auto = AUTO            # optimizer steps
    batch_size: int | Auto = AUTO       # global batch (split over ranks under torchrun)
    lr: float | Auto = AUTO             # Adam learning rate after warmup
    warmup_steps: int | Auto = AUTO     # linear warmup from 0 to lr
    # constant: lr after warmup (Ho et al.); cosine: lr decays along half a cosine to 0 at
    # train.steps, so train.steps then changes training (a longer run cannot continue a shorter one)
    lr_schedule: Literal["auto", "constant", "cosine"] = AUTO
    grad_clip: float | Auto = AUTO      # max global gradient norm; 0 disables clipping (auto: 1)
    ema_decay: float | Auto = AUTO      # EMA of the weights, evaluated and sampled by default
    loss_norm: Literal["auto", "l2", "l1"] = AUTO  # the simple loss's norm (auto: l2)
    hybrid_lambda: float = 0.001        # weight of the vlb part in loss_type=hybrid
    hflip: bool | Auto = AUTO           # random horizontal flips (CIFAR-10 only by default)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = AUTO  # auto: see ddpm.pipeline.runtime.resolve_precision
    device: str = AUTO                  # auto | cpu | cuda | cuda:N
    log_every: int = 50                 # steps between logged training metrics
    checkpoint_every: int = 1000        # steps between resumable checkpoints
    num_threads: int = 0                # torch CPU threads; 0 = torch's default
    nproc: int = 1                      # processes the train stage launches through torchrun (DDP)
    tf32: bool = True                   # TF32 matmuls/convs on CUDA while training (never in evaluate)
    channels_last: bool | Auto = AUTO   # auto: off (see ddpm.training.loop.uses_channels_last); true for images
    compile: bool = False               # torch.compile the network for training
    bound_every: int | Auto = AUTO      # steps between estimates of the test bound (learning curve); 0 = off
    bound_images: int = 100             # test examples in each estimate
    bound_strata: int | Auto = AUTO     # timesteps per example (stratified; auto: min(10, timesteps))


@dataclass(frozen=True)
class SampleConfig:
    num_samples: int = 256              # also the sample size of every quality metric and its floor
    batch_size: int = 256
    sampler: Literal["auto", "ancestral", "ddim", "pc", "ode", "ald"] = AUTO  # auto: the family's (FAMILY_SAMPLERS)
    steps: int = 0                      # 0 = all T steps (pc: all sde.num_scales); fewer respaces the process
    eta: float = 0.0                    # DDIM noise (1 = ancestral variance)
    clip_denoised: bool = True
    trajectory_frames: int = 10         # states of the reverse process kept for the strip
    use_ema: bool = True
    predictor: Literal["auto", "euler_maruyama", "reverse_diffusion", "ancestral", "none"] = AUTO  # pc only
    corrector: Literal["auto", "langevin", "annealed_langevin", "none"] = AUTO  # pc only
    snr: float | Auto = AUTO            # pc's corrector (auto: 0.16, score_sde)
    corrector_steps: int = 1            # pc's corrector steps per step


@dataclass(frozen=True)
class SdeConfig:
    """The continuous-time SDE of ``family: sde`` (Song et al. 2021); ``auto``: score_sde's
    settings for the keys that fit ``type``; keys that do not fit it stay ``auto``."""

    type: Literal["auto", "vp", "subvp", "ve"] = AUTO  # auto: vp
    beta_min: float | Auto = AUTO       # vp, subvp (auto: 0.1)
    beta_max: float | Auto = AUTO       # vp, subvp (auto: 20)
    sigma_min: float | Auto = AUTO      # ve (auto: 0.02, score_sde's 0.01 on [0, 1] data scaled to [-1, 1])
    sigma_max: float | Auto = AUTO      # ve (auto: the largest pairwise distance of the training data, NCSNv2's T1)
    num_scales: int | Auto = AUTO       # N: the network's time scale N - 1 and pc's steps (auto: 1000)
    weighting: Literal["auto", "sigma2", "g2"] = AUTO  # the loss's lambda(t) (auto: sigma2)
    eps: float | Auto = AUTO            # t ~ U(eps, 1) in training (auto: 1e-5)


@dataclass(frozen=True)
class NcsnConfig:
    """The noise levels and annealed Langevin dynamics of ``family: ncsn`` (Song & Ermon 2019, 2020)."""

    sigma_max: float | Auto = AUTO      # auto: the largest pairwise distance of the training data (T1)
    sigma_min: float | Auto = AUTO      # auto: 0.02 (the references' 0.01 on [0, 1] data, scaled to [-1, 1])
    num_levels: int | Auto = AUTO       # auto: NCSNv2's T2 rule; data of dimension <= 4: 10 (NCSN)
    steps_per_level: int | Auto = AUTO  # auto: ceil(1000 / num_levels) (NCSN's 100 at 10 levels, NCSNv2's 5 at 232)
    step_lr: float | Auto = AUTO        # ALD's eps (auto: NCSNv2's T4 rule for steps_per_level)
    denoise: bool | Auto = AUTO         # the final denoising step (auto: true, NCSNv2)
    init: Literal["auto", "uniform", "gaussian"] = AUTO  # ALD's start (auto: uniform, as the references)


@dataclass(frozen=True)
class OdeConfig:
    """The probability-flow ODE: its likelihood (evaluate) and its sampler (sample.sampler=ode)."""

    rtol: float = 1e-5
    atol: float = 1e-5
    eps: float = 1e-5                   # the likelihood integrates from t = eps (score_sde)
    sample_eps: float | Auto = AUTO     # the sampler stops at t = sample_eps (auto: the SDE's, 1e-3 VP / 1e-5 VE)
    denoise: bool = True                # the sampler's last step: one noise-free reverse-diffusion step at
                                        # t = sample_eps (score_sde's noise_removal); false: the ODE's x(eps)
    divergence: Literal["auto", "exact", "hutchinson"] = AUTO  # auto: exact for vectors, Hutchinson for images
    num_images: int = 20                # test images in the ODE likelihood (families ddpm and sde); 0: none
    repeats: int = 1                    # dequantization draws per image (score_sde's test bpd: 5)


@dataclass(frozen=True)
class EvaluateConfig:
    num_images: int = 0                 # test images in the bound; 0 = the whole test split
    batch_size: int = 512               # examples per network call (timesteps are batched)
    clip_denoised: bool = True          # images only; recorded with every reported number
    use_ema: bool = True


@dataclass(frozen=True)
class ClassifierConfig:
    """The small classifier whose features score sample quality on labelled image datasets."""

    steps: int | Auto = AUTO            # optimizer steps (auto: per dataset; 0 for data without labels)
    batch_size: int = 128
    lr: float = 1e-3                    # Adam
    width: int = 32                     # channels of the first convolution
    feature_dim: int = 64               # penultimate features: the space the quality metrics work in


@dataclass(frozen=True)
class QualityConfig:
    """Sample-quality metrics of the sample stage's samples, and of the sweep's settings."""

    metrics: tuple[str, ...] | Auto = AUTO  # families: classifier | inception | raw (auto: per dataset)
    sweep: tuple[str, ...] = ("ddim:10", "ddim:20", "ddim:50", "ddim:100")  # sampler:steps, scored vs NFE
    batch_size: int = 256               # network batch for the sweep's samples and the features
    kid_subset_size: int | Auto = AUTO  # samples per KID subset (auto: sample.num_samples // 5 in 2..1000)
    kid_subsets: int | Auto = AUTO      # auto: sample.num_samples // kid_subset_size, disjoint subsets
    nearest_k: int = 5                  # neighbours for precision/recall and density/coverage
    inception_weights: str = ""         # path to torch-fidelity's Inception weights; empty: Inception skipped


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "ddpm"
    tracking_uri: str = ""              # empty: sqlite:///mlflow.db at the repository root


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion's keys (top level in params.yaml); ``auto``: the recipe's, else Ho et al.'s."""

    beta_schedule: str = AUTO
    timesteps: int | Auto = AUTO
    beta_start: float | Auto = AUTO
    beta_end: float | Auto = AUTO
    mean_type: Literal["auto", "eps", "x0", "v"] = AUTO
    var_type: Literal["auto", "fixed_small", "fixed_large", "learned_range"] = AUTO
    loss_type: Literal["auto", "simple", "vlb", "hybrid"] = AUTO


@dataclass(frozen=True)
class Params:
    recipe: str = "ddpm"                # a system of ddpm.recipes: fills the keys left at auto
    dataset: str = AUTO                 # auto: the recipe's dataset, else digits
    seed: int = 0
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
    def from_dict(cls, raw: dict[str, Any], resolve: bool = True) -> Params:
        """Build and validate from the params.yaml mapping (top-level diffusion keys flat)."""
        if not isinstance(raw, dict):
            raise ConfigError(f"params must be a mapping of keys to values, got {type(raw).__name__}")
        top = {f.name for f in fields(DiffusionConfig)} | set(_TOP_LEVEL)
        sections = {f.name: f.type for f in fields(cls) if f.name not in (*_TOP_LEVEL, "diffusion")}
        _reject_unknown(raw, top | set(sections), prefix="")
        top_level = {k: v for k, v in raw.items() if k in top and k not in _TOP_LEVEL}
        diffusion = _build(DiffusionConfig, top_level, "")
        kwargs: dict[str, Any] = {"diffusion": diffusion}
        for key in _TOP_LEVEL:
            if key in raw:
                kwargs[key] = _coerce(key, raw[key], get_type_hints(cls)[key])
        hints = get_type_hints(cls)
        for name in sections:
            section = raw.get(name, {})
            if section is None:
                section = {}
            if not isinstance(section, dict):
                raise ConfigError(f"{name}: expected a section of keys, got {section!r}")
            kwargs[name] = _build(hints[name], section, f"{name}.")
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
        """Range checks that need more than a type (raised before any expensive work)."""
        _check(self.dataset in DATASETS, "dataset", self.dataset, f"one of {', '.join(DATASETS)}")
        _check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        d = self.diffusion
        _check(d.beta_schedule in SCHEDULES, "beta_schedule", d.beta_schedule, f"one of {', '.join(SCHEDULES)}")
        _check(d.timesteps >= 1, "timesteps", d.timesteps, "an integer >= 1")
        for key in ("beta_start", "beta_end"):
            _check(0 < getattr(d, key) < 1, key, getattr(d, key), "a number in the open interval (0, 1)")
        if self.family != "ddpm":
            for key in ("mean_type", "var_type", "loss_type"):
                _check(getattr(d, key) == AUTO, key, getattr(d, key),
                       f"auto with family={self.family} (it trains a noise-predicting network with its own "
                       "objective; the key belongs to family=ddpm)")
        elif d.var_type == "learned_range":
            _check(d.loss_type in ("hybrid", "vlb"), "loss_type", d.loss_type,
                   "'hybrid' or 'vlb' with var_type=learned_range (the simple loss does not train the variance)")
        else:
            # The hybrid loss stops the vlb part's gradient on the mean (Nichol & Dhariwal
            # 2021, sec. 3.1), so with a fixed variance it would silently train the simple loss.
            _check(d.loss_type in ("simple", "vlb"), "loss_type", d.loss_type,
                   f"'simple' or 'vlb' with var_type={d.var_type} (the hybrid loss's vlb part trains only "
                   "a learned variance: use var_type=learned_range)")
        if d.beta_schedule == "jsd" and self.family == "ddpm":
            _check(d.mean_type != "eps", "mean_type", d.mean_type,
                   "'x0' or 'v' with beta_schedule=jsd (its last beta is 1, so eps cannot recover x0)")
        if self.data.test_size != AUTO:
            _check(self.data.test_size >= 0, "data.test_size", self.data.test_size,
                   "an integer >= 0 (torchvision datasets: 0 = the whole official test split) or auto")
        _check(self.data.swissroll_train_size >= 1, "data.swissroll_train_size", self.data.swissroll_train_size,
               "an integer >= 1")
        _finite_at_least("data.swissroll_noise", self.data.swissroll_noise, 0)
        _validate_image_folder(self)
        m = self.model
        _positive_or_auto("model.base_channels", m.base_channels)
        _positive_or_auto("model.num_res_blocks", m.num_res_blocks)
        for key in ("channel_mult", "attn_resolutions"):
            value = getattr(m, key)
            if value != AUTO and key == "channel_mult":
                _check(len(value) >= 1 and all(v >= 1 for v in value), f"model.{key}", list(value),
                       "a non-empty list of integers >= 1")
            if value != AUTO and key == "attn_resolutions":
                _check(all(v >= 1 for v in value), f"model.{key}", list(value),
                       "a list of resolutions >= 1 (may be empty)")
        if m.dropout != AUTO:
            _check(0 <= m.dropout < 1, "model.dropout", m.dropout, "a number in [0, 1)")
        for key in ("num_heads", "mlp_hidden", "mlp_layers"):
            _check(getattr(m, key) >= 1, f"model.{key}", getattr(m, key), "an integer >= 1")
        t = self.train
        for key in ("steps", "batch_size", "warmup_steps"):
            value = getattr(t, key)
            if value != AUTO:
                low = 0 if key == "warmup_steps" else 1
                _check(value >= low, f"train.{key}", value, f"an integer >= {low}")
        if t.lr != AUTO:
            _check(0 < t.lr < 1, "train.lr", t.lr, "a number in (0, 1)")
        if t.ema_decay != AUTO:
            _check(0 <= t.ema_decay < 1, "train.ema_decay", t.ema_decay, "a number in [0, 1)")
        _finite_at_least("train.grad_clip", t.grad_clip, 0, " (0 disables clipping)")
        _finite_at_least("train.hybrid_lambda", t.hybrid_lambda, 0)
        _check(t.device == AUTO or t.device == "cpu" or t.device.startswith("cuda"), "train.device", t.device,
               "auto, cpu, cuda or cuda:N")
        for key in ("log_every", "checkpoint_every", "bound_images"):
            _check(getattr(t, key) >= 1, f"train.{key}", getattr(t, key), "an integer >= 1")
        if t.bound_every != AUTO:
            _check(t.bound_every >= 0, "train.bound_every", t.bound_every, "an integer >= 0 (0 = off) or auto")
        _check(1 <= t.bound_strata <= d.timesteps, "train.bound_strata", t.bound_strata,  # auto is resolved
               f"an integer in 1..timesteps={d.timesteps}")
        _check(t.num_threads >= 0, "train.num_threads", t.num_threads, "an integer >= 0 (0 = torch's default)")
        _check(t.nproc >= 1, "train.nproc", t.nproc, "an integer >= 1 (processes on this machine)")
        s = self.sample
        _check(s.num_samples >= 1, "sample.num_samples", s.num_samples, "an integer >= 1")
        _check(s.batch_size >= 1, "sample.batch_size", s.batch_size, "an integer >= 1")
        if self.family == "sde":
            _check(s.steps >= 0, "sample.steps", s.steps, "an integer >= 0 (0 = sde.num_scales)")
        else:
            _check(0 <= s.steps <= d.timesteps, "sample.steps", s.steps,
                   f"an integer in 0..timesteps={d.timesteps} (0 = all)")
        _finite_at_least("sample.eta", s.eta, 0)
        _check(s.trajectory_frames >= 2, "sample.trajectory_frames", s.trajectory_frames, "an integer >= 2")
        e = self.evaluate
        _check(e.num_images >= 0, "evaluate.num_images", e.num_images, "an integer >= 0 (0 = the whole test split)")
        _check(e.batch_size >= 1, "evaluate.batch_size", e.batch_size, "an integer >= 1")
        _check(bool(self.mlflow.experiment.strip()), "mlflow.experiment", self.mlflow.experiment, "a non-empty name")
        _validate_classifier(self.classifier)
        _validate_quality(self)
        _validate_families(self)

    def resolved(self) -> Params:
        """Replace every ``auto`` that ``KEY_ROLES`` says loading resolves (``BY_PARAMS``; the
        stages resolve the rest from the machine, the data or the stored noise levels): an
        explicit value stays, else the recipe's setting, else the dataset's default, else
        ``BASE_DEFAULTS`` (ddpm.recipes)."""
        _check(self.recipe in RECIPES, "recipe", self.recipe, f"one of {', '.join(RECIPES)}")
        recipe = recipe_settings(self.recipe)
        dataset = self.dataset if self.dataset != AUTO else recipe.get("dataset", BASE_DEFAULTS["dataset"])
        _check(dataset in DATASETS, "dataset", dataset, f"one of {', '.join(DATASETS)} or auto")

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
        if self.family != "ddpm":
            # The score families train an eps network with their own objective: the DDPM's
            # parametrisation, reverse variance and loss do not apply and stay auto.
            diffusion = dataclasses.replace(diffusion, mean_type=self.diffusion.mean_type,
                                            var_type=self.diffusion.var_type, loss_type=self.diffusion.loss_type)
        sections = {"diffusion": diffusion, **_resolved_families(self, dataset, diffusion.timesteps)}
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


# ---------------------------------------------------------------------- key roles
# What each params key (dotted, as `dvc exp run -S` names it) is to a trained model. Three
# decisions read this table and nothing else: whether a saved training state may be resumed
# (ddpm.training.state: every NETWORK and TRAINING key must match), whether a checkpoint may be
# used with the current params (ddpm.pipeline.checkpoint: every NETWORK key must match), and who
# resolves a key's ``auto``. A key the table does not name counts as TRAINING (fail safe), and
# tests/test_key_roles.py walks every key of the schema and fails on one that is not named.
NETWORK = "network"        # what the network is and the process it was trained for; changes training too
TRAINING = "training"      # what training computes (the objective, the data, the optimizer, numerics)
RUNTIME = "runtime"        # how training runs, not what it computes: device, threads, logging, the probe,
                           # and train.steps (how far: a longer run continues a shorter one's state,
                           # unless train.lr_schedule decays to 0 at train.steps: ddpm.training.state)
DOWNSTREAM = "downstream"  # read after training: sampling, evaluation, sample quality, tracking
# Who resolves a key's auto: ``load_params`` (the recipe, the dataset's defaults, the family),
# the train stage from the training data (stored with the model), the train stage from the
# machine (stored with the model), the sample stage from the stored noise levels, or the
# prepare stage from the raw data (recorded in the prepared meta.json).
BY_PARAMS, BY_DATA, BY_MACHINE, BY_SAMPLE, BY_PREPARE = "params", "data", "machine", "sample", "prepare"


@dataclass(frozen=True)
class KeyRole:
    role: str                # NETWORK, TRAINING, RUNTIME or DOWNSTREAM
    auto: str | None = None  # who resolves its auto (BY_*); None for a key that takes no auto


def _roles(role: str, keys: str, auto: str | None = None) -> dict[str, KeyRole]:
    return {key: KeyRole(role, auto) for key in keys.split()}


KEY_ROLES: dict[str, KeyRole] = {
    **_roles(NETWORK, "family"),
    **_roles(NETWORK, "dataset", BY_PARAMS),
    **_roles(NETWORK, "beta_schedule timesteps beta_start beta_end mean_type var_type", BY_PARAMS),
    **_roles(NETWORK, "model.name model.base_channels model.channel_mult model.num_res_blocks model.attn_resolutions "
                      "model.dropout model.mlp_hidden model.mlp_layers model.time_embedding", BY_PARAMS),
    **_roles(NETWORK, "model.num_heads"),
    **_roles(NETWORK, "sde.type sde.beta_min sde.beta_max sde.sigma_min sde.num_scales sde.weighting sde.eps",
             BY_PARAMS),
    **_roles(NETWORK, "sde.sigma_max ncsn.sigma_max ncsn.num_levels", BY_DATA),
    **_roles(NETWORK, "ncsn.sigma_min", BY_PARAMS),
    # recipe fills the keys left at auto; counted itself, so a state is never shared across recipes.
    **_roles(TRAINING, "recipe seed data.folder data.swissroll_noise train.hybrid_lambda train.tf32"),
    **_roles(TRAINING, "data.test_size", BY_PREPARE),
    **_roles(TRAINING, "loss_type data.swissroll_train_size data.image_size train.lr train.lr_schedule "
                       "train.warmup_steps train.grad_clip train.ema_decay train.loss_norm train.hflip", BY_PARAMS),
    **_roles(TRAINING, "train.batch_size", BY_DATA),
    **_roles(TRAINING, "train.precision train.channels_last", BY_MACHINE),
    **_roles(RUNTIME, "train.steps", BY_PARAMS),
    **_roles(RUNTIME, "train.device", BY_MACHINE),
    **_roles(RUNTIME, "train.log_every train.checkpoint_every train.num_threads train.nproc train.compile "
                      "train.bound_images"),
    **_roles(RUNTIME, "train.bound_every train.bound_strata", BY_PARAMS),
    **_roles(DOWNSTREAM, "sample.num_samples sample.batch_size sample.steps sample.eta sample.clip_denoised "
                         "sample.trajectory_frames sample.use_ema sample.corrector_steps"),
    **_roles(DOWNSTREAM, "sample.sampler sample.predictor sample.corrector sample.snr", BY_PARAMS),
    **_roles(DOWNSTREAM, "ncsn.steps_per_level ncsn.step_lr", BY_SAMPLE),
    **_roles(DOWNSTREAM, "ncsn.denoise ncsn.init", BY_PARAMS),
    **_roles(DOWNSTREAM, "ode.rtol ode.atol ode.eps ode.num_images ode.repeats ode.denoise"),
    **_roles(DOWNSTREAM, "ode.sample_eps ode.divergence", BY_PARAMS),
    **_roles(DOWNSTREAM, "evaluate.num_images evaluate.batch_size evaluate.clip_denoised evaluate.use_ema"),
    **_roles(DOWNSTREAM, "classifier.batch_size classifier.lr classifier.width classifier.feature_dim"),
    **_roles(DOWNSTREAM, "classifier.steps", BY_PARAMS),
    **_roles(DOWNSTREAM, "quality.sweep quality.batch_size quality.nearest_k quality.inception_weights"),
    **_roles(DOWNSTREAM, "quality.metrics quality.kid_subset_size quality.kid_subsets", BY_PARAMS),
    **_roles(DOWNSTREAM, "mlflow.experiment mlflow.tracking_uri"),
}


def key_role(key: str) -> str:
    """The role of a dotted params key; TRAINING for a key the table does not name (fail safe)."""
    return KEY_ROLES[key].role if key in KEY_ROLES else TRAINING


def changes_training(key: str) -> bool:
    """Whether a saved training state from another value of ``key`` must not be resumed."""
    return key_role(key) in (NETWORK, TRAINING)


def resolved_by(who: str) -> tuple[str, ...]:
    """The keys whose ``auto`` ``who`` (one of BY_*) resolves, in the table's order."""
    return tuple(key for key, role in KEY_ROLES.items() if role.auto == who)


# The keys whose auto the machine decides (the train stage stores what it used), those the
# train stage derives from the training data (NCSNv2's T1 and T2 rules, the batch capped at the
# training split) and stores with the model, those the sample stage derives from the stored
# noise levels, and those the prepare stage derives from the raw data (ddpm.data.prepare).
RUNTIME_RESOLVED = resolved_by(BY_MACHINE)
TRAIN_RESOLVED = resolved_by(BY_DATA)
SAMPLE_RESOLVED = resolved_by(BY_SAMPLE)
PREPARE_RESOLVED = resolved_by(BY_PREPARE)


# ---------------------------------------------------------------------- families
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
# The smallest noise level of VE and NCSN: the references' sigma_min = 0.01 (NCSN, NCSNv2,
# score_sde's VE configs) is on data in [0, 1]; this project's data live in [-1, 1], twice as
# wide, so the same relative noise is 0.02 (sigma_max: auto follows the data by itself, T1).
SIGMA_MIN = 0.02
# The keys of each SDE type, with score_sde's defaults (sigma_max: TRAIN_RESOLVED).
SDE_TYPE_KEYS: dict[str, dict[str, Any]] = {
    "vp": {"beta_min": 0.1, "beta_max": 20.0},
    "subvp": {"beta_min": 0.1, "beta_max": 20.0},
    "ve": {"sigma_min": SIGMA_MIN, "sigma_max": AUTO},
}
SDE_COMMON = {"num_scales": 1000, "weighting": "sigma2", "eps": 1e-5}
# Where score_sde's samplers stop (sampling.py: 1e-3 for VP and sub-VP, 1e-5 for VE).
SDE_SAMPLING_EPS = {"vp": 1e-3, "subvp": 1e-3, "ve": 1e-5}
# Data of at most this dimension have no answer from NCSNv2's T2 rule (ddpm.score.ncsn.num_levels_for);
# their ladder takes NCSN's 10 levels.
NCSN_LOW_DIM, NCSN_LOW_DIM_LEVELS = 4, 10


def _fill_auto(section: Any, values: dict[str, Any]) -> Any:
    """``section`` with its ``auto`` fields named in ``values`` set to them."""
    return dataclasses.replace(section, **{k: v for k, v in values.items() if getattr(section, k) == AUTO})


def _resolved_families(params: Params, dataset: str, timesteps: int) -> dict[str, Any]:
    """The sections sample, sde, ncsn and ode with the ``auto`` that apply to ``params.family``
    filled in; keys of other families (and of other SDE types) stay ``auto``."""
    sde, ncsn, s, ode = params.sde, params.ncsn, params.sample, params.ode
    sde_type = None
    if params.family == "sde":
        sde_type = "vp" if sde.type == AUTO else sde.type
        sde = _fill_auto(dataclasses.replace(sde, type=sde_type), {**SDE_TYPE_KEYS.get(sde_type, {}), **SDE_COMMON})
    if params.family == "ncsn":
        ncsn = _fill_auto(ncsn, {"sigma_min": SIGMA_MIN, "denoise": True, "init": "uniform"})
    sampler = FAMILY_SAMPLERS[params.family][0] if s.sampler == AUTO else s.sampler
    s = dataclasses.replace(s, sampler=sampler)
    if sampler == "pc":
        variance_exploding = sde_type == "ve"
        # score_sde's configs: VE runs reverse diffusion with a corrector, VP and sub-VP Euler-Maruyama
        # alone; the corrector is annealed Langevin (pc.py: per-example Langevin is biased in low dimension).
        s = _fill_auto(s, {"predictor": "reverse_diffusion" if variance_exploding else "euler_maruyama",
                           "corrector": "annealed_langevin" if variance_exploding else "none", "snr": 0.16})
    if params.family != "ncsn":
        # ddpm: the first knot 1 / T (a bad timesteps is refused by validate).
        eps = SDE_SAMPLING_EPS[sde_type] if sde_type else 1.0 / max(timesteps, 1)
        vector = DATASET_INFO[dataset].kind == "vector"
        ode = _fill_auto(ode, {"sample_eps": eps, "divergence": "exact" if vector else "hutchinson"})
    return {"sample": s, "sde": sde, "ncsn": ncsn, "ode": ode}


def _set_keys(section: Any) -> list[str]:
    return [f.name for f in fields(section) if getattr(section, f.name) != AUTO]


def _validate_families(params: Params) -> None:
    """The sampler, the sde and ncsn sections and the ODE settings against the family."""
    family, s = params.family, params.sample
    _check(s.sampler in FAMILY_SAMPLERS[family], "sample.sampler", s.sampler,
           f"a sampler family={family} can run: {', '.join(FAMILY_SAMPLERS[family])} (or auto)")
    if s.sampler != "pc":
        for key in ("predictor", "corrector", "snr"):
            _check(getattr(s, key) == AUTO, f"sample.{key}", getattr(s, key), "auto unless sample.sampler=pc")
    else:
        _check(math.isfinite(s.snr) and s.snr > 0, "sample.snr", s.snr, "a finite number > 0 or auto")
        if family == "ddpm" and s.predictor in ("reverse_diffusion", "ancestral"):
            T = params.diffusion.timesteps
            _check(s.steps in (0, T), "sample.steps", s.steps,
                   f"0 or timesteps={T} with predictor={s.predictor} (it walks the diffusion's own T steps; "
                   "euler_maruyama takes any number)")
        _check(s.corrector_steps >= 1, "sample.corrector_steps", s.corrector_steps, "an integer >= 1")
    for name, owner in (("sde", "sde"), ("ncsn", "ncsn")):
        if family != owner:
            for key in _set_keys(getattr(params, name)):
                _check(False, f"{name}.{key}", getattr(getattr(params, name), key),
                       f"auto with family={family} (the {name} section belongs to family={owner})")
    if family == "sde":
        _validate_sde(params)
    if family == "ncsn":
        _validate_ncsn(params.ncsn)
    o = params.ode
    for key in ("rtol", "atol"):
        _check(math.isfinite(getattr(o, key)) and getattr(o, key) > 0, f"ode.{key}", getattr(o, key),
               "a finite number > 0 (the adaptive solver's tolerance)")
    _check(0 < o.eps < 1, "ode.eps", o.eps, "a number in (0, 1): the likelihood integrates from t = eps to 1")
    if o.sample_eps != AUTO:
        _check(0 < o.sample_eps < 1, "ode.sample_eps", o.sample_eps, "a number in (0, 1) or auto")
    _check(o.num_images >= 0, "ode.num_images", o.num_images, "an integer >= 0 (0: no ODE likelihood)")
    _check(o.repeats >= 1, "ode.repeats", o.repeats, "an integer >= 1")


def _validate_sde(params: Params) -> None:
    sde, s = params.sde, params.sample
    fitting = set(SDE_TYPE_KEYS[sde.type])
    for key in ("beta_min", "beta_max", "sigma_min", "sigma_max"):
        if key not in fitting:
            owners = ", ".join(t for t, keys in SDE_TYPE_KEYS.items() if key in keys)
            _check(getattr(sde, key) == AUTO, f"sde.{key}", getattr(sde, key),
                   f"auto with sde.type={sde.type} (the key belongs to sde.type {owners})")
    if sde.type == "ve":
        _check(math.isfinite(sde.sigma_min) and sde.sigma_min > 0, "sde.sigma_min", sde.sigma_min,
               "a finite number > 0")
        if sde.sigma_max != AUTO:
            _check(math.isfinite(sde.sigma_max) and sde.sigma_max > sde.sigma_min, "sde.sigma_max", sde.sigma_max,
                   f"a finite number > sde.sigma_min={sde.sigma_min}, or auto")
    else:
        _check(math.isfinite(sde.beta_min) and sde.beta_min > 0, "sde.beta_min", sde.beta_min, "a finite number > 0")
        _check(math.isfinite(sde.beta_max) and sde.beta_max > sde.beta_min, "sde.beta_max", sde.beta_max,
               f"a finite number > sde.beta_min={sde.beta_min}")
    _check(sde.num_scales >= 2, "sde.num_scales", sde.num_scales, "an integer >= 2")
    if sde.type == "vp":
        # VP's discrete betas beta_max / N must stay below 1.
        _check(sde.num_scales > sde.beta_max, "sde.num_scales", sde.num_scales,
               f"an integer > sde.beta_max={sde.beta_max} (VP's discrete betas beta_max / N must be < 1)")
    _check(0 < sde.eps < 1, "sde.eps", sde.eps, "a number in (0, 1): training draws t ~ U(eps, 1)")
    if s.sampler == "pc" and s.predictor in ("reverse_diffusion", "ancestral"):
        if sde.type == "subvp":
            _check(s.predictor != "ancestral", "sample.predictor", s.predictor,
                   "euler_maruyama, reverse_diffusion or none with sde.type=subvp (sub-VP has no ancestral chain)")
        steps = s.steps or sde.num_scales
        if sde.type == "vp":
            _check(steps > sde.beta_max, "sample.steps", s.steps,
                   f"0 or an integer > sde.beta_max={sde.beta_max} with predictor={s.predictor} "
                   "(it walks VP's discrete chain of that many steps, whose betas beta_max / steps must be < 1)")


def _validate_ncsn(n: NcsnConfig) -> None:
    _check(math.isfinite(n.sigma_min) and n.sigma_min > 0, "ncsn.sigma_min", n.sigma_min, "a finite number > 0")
    if n.sigma_max != AUTO:
        _check(math.isfinite(n.sigma_max) and n.sigma_max > n.sigma_min, "ncsn.sigma_max", n.sigma_max,
               f"a finite number > ncsn.sigma_min={n.sigma_min}, or auto")
    if n.num_levels != AUTO:
        _check(n.num_levels >= 2, "ncsn.num_levels", n.num_levels, "an integer >= 2 or auto")
    if n.steps_per_level != AUTO:
        _check(n.steps_per_level >= 1, "ncsn.steps_per_level", n.steps_per_level, "an integer >= 1 or auto")
    if n.step_lr != AUTO:
        _check(math.isfinite(n.step_lr) and n.step_lr > 0, "ncsn.step_lr", n.step_lr, "a finite number > 0 or auto")


# ---------------------------------------------------------------------- sample quality
# Metric families of the quality stage, each with the datasets it can serve: features of the
# classifier the pipeline trains (labelled images), of the Inception network whose weights
# the user supplies (3-channel images), or distances between the raw points (vectors).
QUALITY_FAMILIES: dict[str, str] = {
    "classifier": "labelled image datasets (a Frechet distance, KID, precision/recall, density/coverage "
                  "and the label distribution in the features of the classifier stage's network)",
    "inception": "3-channel image datasets (FID, KID and IS with quality.inception_weights)",
    "raw": "vector datasets (energy distance and sliced Wasserstein distance of the points)",
}
SAMPLERS = ("ancestral", "ddim")


def quality_families_for(dataset: str) -> tuple[str, ...]:
    """The metric families ``dataset`` can serve."""
    info = DATASET_INFO[dataset]
    if info.kind == "vector":
        return ("raw",)
    return ("classifier", "inception") if info.shape[0] == 3 else ("classifier",)


def default_quality_metrics(dataset: str) -> tuple[str, ...]:
    """``quality.metrics: auto``: every family the dataset serves (Inception is then skipped,
    with a line saying how to enable it, unless its weights are given)."""
    return quality_families_for(dataset)


def parse_sampler_setting(text: str, timesteps: int) -> tuple[str, int]:
    """``"ddim:50"`` -> ("ddim", 50); ``"ancestral"`` -> ("ancestral", 0), 0 meaning all T steps.

    Steps of T or more also mean all T steps, so the default sweep stays valid for a run with
    fewer timesteps (``-S timesteps=50``); settings that coincide are scored once. ConfigError
    for anything else, naming the accepted forms."""
    name, _, steps = str(text).partition(":")
    accepted = (f"'sampler' or 'sampler:steps' with sampler one of {', '.join(SAMPLERS)} "
                "and steps an integer >= 1 (steps >= timesteps: all of them), e.g. ddim:50")
    if name not in SAMPLERS or (steps and not (steps.isdigit() and int(steps) >= 1)):
        raise ConfigError(f"quality.sweep entry {text!r} is not accepted; expected {accepted}")
    return name, (int(steps) if steps and int(steps) < timesteps else 0)


def _validate_classifier(c: ClassifierConfig) -> None:
    if c.steps != AUTO:
        _check(c.steps >= 0, "classifier.steps", c.steps, "an integer >= 0 (0: no classifier) or auto")
    for key in ("batch_size", "width", "feature_dim"):
        _check(getattr(c, key) >= 1, f"classifier.{key}", getattr(c, key), "an integer >= 1")
    _check(0 < c.lr < 1, "classifier.lr", c.lr, "a number in (0, 1)")


def _validate_image_folder(params: Params) -> None:
    """data.image_size; for dataset=folder with the default U-Net, a size it can take (the folder
    itself is checked by the prepare stage, the one that reads it)."""
    size, m, default = params.data.image_size, params.model, DATASET_DEFAULTS["folder"]
    _check(size >= 1, "data.image_size", size, "an integer >= 1")
    default_levels = (m.channel_mult, m.attn_resolutions) == (default["model.channel_mult"],
                                                              default["model.attn_resolutions"])
    if params.dataset == "folder" and m.name == "unet" and default_levels:
        _check(size in FOLDER_IMAGE_SIZES, "data.image_size", size,
               f"one of {', '.join(map(str, FOLDER_IMAGE_SIZES))} for dataset=folder with the default U-Net "
               "(it halves the image 3 times and attends at 16 x 16), or set model.channel_mult and "
               "model.attn_resolutions for this size")


def _validate_quality(params: Params) -> None:
    q, n = params.quality, params.sample.num_samples
    servable = quality_families_for(params.dataset)
    if q.metrics != AUTO:
        for family in q.metrics:
            _check(family in QUALITY_FAMILIES, "quality.metrics", list(q.metrics),
                   f"a list of families from {', '.join(QUALITY_FAMILIES)}, or auto")
            _check(family in servable, "quality.metrics", list(q.metrics),
                   f"families that dataset={params.dataset} can serve: {', '.join(servable)} "
                   f"('{family}' serves {QUALITY_FAMILIES[family]})")
    for entry in q.sweep:
        parse_sampler_setting(entry, params.diffusion.timesteps)
    _check(q.batch_size >= 1, "quality.batch_size", q.batch_size, "an integer >= 1")
    _check(q.nearest_k >= 1, "quality.nearest_k", q.nearest_k, "an integer >= 1")
    _check(n >= 2, "sample.num_samples", n, "an integer >= 2 (KID compares pairs of samples)")
    if q.kid_subset_size != AUTO:
        _check(2 <= q.kid_subset_size <= n, "quality.kid_subset_size", q.kid_subset_size,
               f"an integer in 2..sample.num_samples={n} (KID's subsets are drawn from the samples; "
               "draw more samples or use smaller subsets), or auto")
    if q.kid_subsets != AUTO:
        _check(q.kid_subsets >= 1, "quality.kid_subsets", q.kid_subsets, "an integer >= 1 or auto")


# Per-dataset defaults for the ``auto`` fields. CIFAR-10 follows Ho et al. 2020 (App. B):
# 35.7M-parameter U-Net, ch 128, mult (1,2,2,2), 2 res blocks, attention at 16x16,
# dropout 0.1, Adam 2e-4, batch 128, 5000 warmup steps, EMA 0.9999, 800k steps, flips.
# Digits and the Swiss roll are tuned to train in minutes on a laptop CPU. model.name is the
# network that fits the data: the MLP for vectors, the U-Net for images.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {
        "model.name": "unet", "model.base_channels": 32, "model.channel_mult": (1, 2), "model.num_res_blocks": 1,
        "model.attn_resolutions": (4,), "model.dropout": 0.0,
        "train.steps": 3000, "train.batch_size": 128, "train.lr": 1e-3, "train.warmup_steps": 100,
        "train.ema_decay": 0.995, "train.hflip": False, "train.bound_every": 250, "classifier.steps": 500,
    },
    "swissroll": {
        "model.name": "mlp", "model.base_channels": 32, "model.channel_mult": (1,), "model.num_res_blocks": 1,
        "model.attn_resolutions": (), "model.dropout": 0.0,
        "train.steps": 5000, "train.batch_size": 256, "train.lr": 1e-3, "train.warmup_steps": 100,
        "train.ema_decay": 0.995, "train.hflip": False, "train.bound_every": 250,
        "classifier.steps": 0,  # no classifier: the Swiss roll has no labels (its metrics use the points)
    },
    "mnist": {
        "model.name": "unet", "model.base_channels": 64, "model.channel_mult": (1, 2, 2), "model.num_res_blocks": 2,
        "model.attn_resolutions": (14,), "model.dropout": 0.1,
        "train.steps": 50000, "train.batch_size": 128, "train.lr": 2e-4, "train.warmup_steps": 1000,
        "train.ema_decay": 0.9999, "train.hflip": False, "train.bound_every": 1000, "classifier.steps": 4000,
    },
    "cifar10": {
        "model.name": "unet", "model.base_channels": 128, "model.channel_mult": (1, 2, 2, 2), "model.num_res_blocks": 2,
        "model.attn_resolutions": (16,), "model.dropout": 0.1,
        "train.steps": 800000, "train.batch_size": 128, "train.lr": 2e-4, "train.warmup_steps": 5000,
        "train.ema_decay": 0.9999, "train.hflip": True, "train.bound_every": 5000, "classifier.steps": 20000,
    },
}
DATASET_DEFAULTS["fashion_mnist"] = dict(DATASET_DEFAULTS["mnist"])
# A folder of one's own images: CIFAR-10's U-Net at half the width (about a quarter of the
# parameters) and an eighth of its steps, since such folders are usually far smaller than
# CIFAR-10's 50,000 images; flips as for CIFAR-10 and in lucidrains' image-folder Dataset.
# Its channel_mult and attn_resolutions fit the sizes FOLDER_IMAGE_SIZES (16 x 16 occurs
# among the U-Net's resolutions); other sizes set those two keys.
DATASET_DEFAULTS["folder"] = {
    "model.name": "unet", "model.base_channels": 64, "model.channel_mult": (1, 2, 2, 2), "model.num_res_blocks": 2,
    "model.attn_resolutions": (16,), "model.dropout": 0.1,
    "train.steps": 100000, "train.batch_size": 64, "train.lr": 2e-4, "train.warmup_steps": 1000,
    "train.ema_decay": 0.9999, "train.hflip": True, "train.bound_every": 2000, "classifier.steps": 4000,
}
FOLDER_IMAGE_SIZES = (16, 32, 64, 128)


def default_setting(recipe: str, dataset: str, key: str) -> Any:
    """What ``auto`` takes for ``key`` before any data are seen: the ``recipe``'s setting, else the
    ``dataset``'s default (``DATASET_DEFAULTS``), else ``BASE_DEFAULTS``; ``auto`` when none sets it.
    ``Params.resolved`` fills keys with it, and the train stage starts from it for the
    ``TRAIN_RESOLVED`` train.batch_size (ddpm.pipeline.build.data_resolved_params)."""
    layers = (recipe_settings(recipe), DATASET_DEFAULTS[dataset], BASE_DEFAULTS)
    return next((layer[key] for layer in layers if key in layer), AUTO)


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads YAML 1.2's float spellings as floats.

    PyYAML resolves plain scalars by the YAML 1.1 rules, whose floats need a dot and a
    signed exponent: ``1e-05`` (what DVC writes for ``-S beta_start=0.00001``), ``1E-5``
    and ``1e5`` stay strings. The YAML 1.2 core schema (spec 1.2.2, sec. 10.3.2) reads
    them as floats; everything else resolves as before.
    """


# The YAML 1.2 core schema's finite floats less the plain integers, which PyYAML's int
# resolver keeps as ints; .inf and .nan already resolve as floats under YAML 1.1.
_YAML12_FLOAT = re.compile(r"^[-+]?(?:(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)$")
ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+.0123456789"))


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read, validate and resolve params.yaml (numbers as ``ParamsLoader`` reads them)."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=ParamsLoader)
    except FileNotFoundError:
        raise ConfigError(f"params file {str(path)!r} not found (run from the repository root)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"params file {str(path)!r} is not valid YAML: {err}") from None
    return Params.from_dict(raw or {})


# ---------------------------------------------------------------------- helpers
def _check(ok: bool, key: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not accepted; expected {accepted}")


def _finite_at_least(key: str, value: float, low: float, note: str = "") -> None:
    _check(math.isfinite(value) and value >= low, key, value, f"a finite number >= {low}{note}")


def _positive_or_auto(key: str, value: Any) -> None:
    if value != AUTO:
        _check(value >= 1, key, value, "an integer >= 1 or auto")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return list(obj)
    return obj


def _reject_unknown(raw: dict[str, Any], known: set[str], prefix: str) -> None:
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else "."
            raise ConfigError(
                f"unknown key '{prefix}{key}'{hint} Known keys: {', '.join(prefix + k for k in sorted(known))}"
            )


def _build(cls: type, section: dict[str, Any], prefix: str) -> Any:
    _reject_unknown(section, {f.name for f in fields(cls)}, prefix)
    hints = get_type_hints(cls)
    return cls(**{k: _coerce(prefix + k, v, hints[k]) for k, v in section.items()})


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        return str(choices[0]) if len(choices) == 1 else "one of " + ", ".join(str(a) for a in choices)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(hint))
    if origin is tuple:
        return "a list of strings" if get_args(hint)[0] is str else "a list of integers"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _integral(value: Any) -> bool:
    """An int, or a float holding an integer (``8e5``, as YAML 1.2 reads it); never a bool."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type ``hint``; return it in the field's type."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in get_args(hint):
            try:
                return _coerce(key, value, option)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in get_args(hint):
            return value
    elif origin is tuple and get_args(hint)[0] is str:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif origin is tuple:
        if isinstance(value, (list, tuple)) and all(_integral(v) for v in value):
            return tuple(int(v) for v in value)
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if _integral(value):
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}={value!r} is not accepted; expected {_describe(hint)}")


__all__ = [
    "AUTO", "DOWNSTREAM", "KEY_ROLES", "KeyRole", "NETWORK", "RUNTIME", "TRAINING", "changes_training", "key_role",
    "resolved_by", "FAMILIES", "FAMILY_SAMPLERS", "FamilyFacts",
    "NcsnConfig", "OdeConfig", "SAMPLE_RESOLVED", "SdeConfig", "TRAIN_RESOLVED",
    "PREPARE_RESOLVED", "SIGMA_MIN", "default_setting",
    "QUALITY_FAMILIES", "RUNTIME_RESOLVED", "SAMPLERS", "ClassifierConfig", "ConfigError", "DataConfig",
    "DiffusionConfig", "EvaluateConfig", "MlflowConfig", "ModelConfig", "Params", "ParamsLoader", "QualityConfig",
    "SampleConfig", "TrainConfig", "DATASET_DEFAULTS", "default_quality_metrics", "load_params",
    "parse_sampler_setting", "quality_families_for",
]
_ = typing  # typing is imported for get_type_hints' evaluation of postponed annotations
