"""What ``auto`` takes: the recipes, the datasets' defaults, the base defaults, the families'.

Order: a value the user sets, then the ``recipe``'s setting, then the dataset's default
(``DATASET_DEFAULTS``), then ``BASE_DEFAULTS`` (Ho et al. 2020); ``default_setting`` walks it.
The families' defaults (the SDE types', NCSN's) are read by ``ddpm.config.families``, which
knows which of them apply.

Recipes: the diffusion systems this project grew from, each one params key away. ``recipe:
<name>`` in params.yaml (``dvc exp run -S recipe=swissroll_sigmoid``) fills every key left at
``auto`` with the system's setting, so a recipe stays an ordinary DVC experiment, cached by DVC
and recorded by MLflow with the values it resolved to. Settings are flat dotted keys, as ``dvc
exp run -S`` names them. Each recipe records where its settings come from; where the write-up
leaves a setting open, the comment says what was chosen and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ddpm.config.checks import AUTO

# fmt: off
# What ``auto`` means when neither the recipe nor the dataset sets a key: DDPM's diffusion
# (Ho et al. 2020, Sec. 4) and the values params.yaml showed before recipes existed.
BASE_DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "beta_schedule": "linear", "timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
    "mean_type": "eps", "var_type": "fixed_small", "loss_type": "simple",
    "data.image_size": 32, "data.swissroll_train_size": 10000,
    "model.mlp_hidden": 128, "model.mlp_layers": 3, "model.time_embedding": "sinusoidal",
    "train.grad_clip": 1.0, "train.loss_norm": "l2", "train.lr_schedule": "constant",
}


@dataclass(frozen=True)
class Recipe:
    summary: str                   # the system, as its write-up names it
    source: str                    # where the settings come from
    settings: dict[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    "ddpm": Recipe(
        "DDPM: eps prediction, L_simple, U-Net with sinusoidal embedding, T = 1000 linear 1e-4..0.02",
        "Ho et al. 2020, Sec. 4 (the base defaults; the network and training follow the dataset)",
    ),
    "vlb": Recipe(
        "DDPM trained on the true bound L_vlb with the discrete decoder, fixed isotropic variance",
        "Ho et al. 2020, Table 2 ('L, fixed isotropic Sigma'); -S beta_schedule=geometric for the geometric one",
        {"loss_type": "vlb"},
    ),
    "sohl_dickstein": Recipe(
        "Sohl-Dickstein et al. 2015: learned reverse variance trained on the bound, its own beta schedule",
        "Diffusion-Probabilistic-Models (model.py generate_beta_arr, T = 1000); the reverse mean is this "
        "project's eps form, the variance Nichol & Dhariwal's learned range",
        {"beta_schedule": "sohl_dickstein", "timesteps": 1000, "var_type": "learned_range", "loss_type": "vlb"},
    ),
    "swissroll_sigmoid": Recipe(
        "Swiss roll: sigmoid schedule 1e-5..1e-2 over T = 100, MLP of three conditional linear layers "
        "(width 128, softplus, a learned per-step scale), Adam 1e-3, gradient clipping at 1",
        "the classic Swiss-roll diffusion tutorial",
        {"dataset": "swissroll", "beta_schedule": "sigmoid", "beta_start": 1e-5, "beta_end": 1e-2,
         "timesteps": 100, "model.name": "mlp", "model.mlp_hidden": 128, "model.mlp_layers": 3,
         "model.time_embedding": "learned", "train.lr": 1e-3, "train.grad_clip": 1.0},
    ),
    "swissroll_rbf": Recipe(
        "Swiss roll: MLP with a radial-basis-function hidden layer and two linear heads (mean, variance), "
        "x0 prediction, 40 steps with variances 0.001..0.05, batch 100, 1500 epochs",
        "Sohl-Dickstein et al. 2015, App. D.1.1 as written up; the variance head needs a learned variance, "
        "trained by the hybrid loss. 1500 epochs of a 1000-point roll at batch 100 are 15000 steps",
        {"dataset": "swissroll", "model.name": "rbf_mlp", "model.mlp_hidden": 16, "mean_type": "x0",
         "timesteps": 40, "beta_schedule": "linear", "beta_start": 1e-3, "beta_end": 5e-2,
         "var_type": "learned_range", "loss_type": "hybrid", "train.batch_size": 100,
         "data.swissroll_train_size": 1000, "train.steps": 15000},
    ),
    "mnist_shufflenet": Recipe(
        "MNIST: U-Net of ShuffleNet units with an MLP time embedding, x0 prediction, T = 1000 linear "
        "1e-4..0.02, 10 epochs at batch 128",
        "the MNIST ShuffleNet-unit write-up; 10 epochs of MNIST's 60,000 images at batch 128 are 4690 steps",
        {"dataset": "mnist", "model.name": "shufflenet_unet", "model.time_embedding": "learned",
         "mean_type": "x0", "timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
         "train.steps": 4690, "train.batch_size": 128},
    ),
    "lucidrains_folder": Recipe(
        "lucidrains-style: Unet(dim=64, dim_mults=(1, 2, 4, 8)), 1000 steps, L1 loss, your own image "
        "folder at 128 x 128",
        "denoising-diffusion-pytorch's README usage (its older default: cosine schedule, eps prediction, "
        "L1 loss, lr 8e-5, batch 32, EMA 0.995); set data.folder to your images",
        {"dataset": "folder", "data.image_size": 128, "model.name": "unet", "model.base_channels": 64,
         "model.channel_mult": (1, 2, 4, 8), "model.attn_resolutions": (16,), "timesteps": 1000,
         "beta_schedule": "cosine", "train.loss_norm": "l1", "train.lr": 8e-5, "train.batch_size": 32,
         "train.ema_decay": 0.995},
    ),
}
# fmt: on


def recipe_settings(name: str) -> dict[str, Any]:
    """The flat settings of recipe ``name`` (KeyError for an unknown one: config validates first)."""
    return dict(RECIPES[name].settings)


# fmt: off
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
# fmt: on


def default_setting(recipe: str, dataset: str, key: str) -> Any:
    """What ``auto`` takes for ``key`` before any data are seen: the ``recipe``'s setting, else the
    ``dataset``'s default (``DATASET_DEFAULTS``), else ``BASE_DEFAULTS``; ``auto`` when none sets it.
    ``Params.resolved`` fills keys with it, and the train stage starts from it for the
    ``TRAIN_RESOLVED`` train.batch_size (ddpm.pipeline.build.data_resolved_params)."""
    layers = (recipe_settings(recipe), DATASET_DEFAULTS[dataset], BASE_DEFAULTS)
    return next((layer[key] for layer in layers if key in layer), AUTO)


# Ten strata of the bound per example, or every timestep of a shorter chain.
DEFAULT_BOUND_STRATA = 10

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
