"""What each params key is to a trained model, and who resolves its ``auto``.

Three decisions read this table and nothing else: whether a saved training state may be resumed
(ddpm.training.state: every NETWORK and TRAINING key must match), whether a checkpoint may be used
with the current params (ddpm.pipeline.checkpoint: every NETWORK key must match), and who resolves a
key's ``auto``. A key the table does not name counts as TRAINING (fail safe), and
tests/config/test_key_roles.py walks every key of the schema and fails on one that is not named.
"""

from __future__ import annotations

from dataclasses import dataclass

# fmt: off
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
# fmt: on


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
