"""Recipes: the diffusion systems this project grew from, each one params key away.

``recipe: <name>`` in params.yaml (``dvc exp run -S recipe=swissroll_sigmoid``) fills every
key that is left at ``auto`` with the system's setting. A key given a value, in params.yaml or
by another ``-S`` on the same command line, keeps that value: the order is explicit value,
then the recipe, then the dataset's default (``ddpm.config.DATASET_DEFAULTS``), then
``BASE_DEFAULTS`` (Ho et al. 2020). So a recipe stays an ordinary DVC experiment, cached by
DVC and recorded by MLflow with the values it resolved to.

Settings are flat dotted keys, as ``dvc exp run -S`` names them. Each recipe records where
its settings come from; where the write-up leaves a setting open, the comment says what was
chosen and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


def recipe_settings(name: str) -> dict[str, Any]:
    """The flat settings of recipe ``name`` (KeyError for an unknown one: config validates first)."""
    return dict(RECIPES[name].settings)
