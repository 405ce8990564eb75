"""params.yaml -> typed, validated, frozen dataclasses.

The diffusion keys live at the top level of params.yaml (``dvc exp run -S
beta_schedule=sigmoid``); the rest sit in sections ``data``, ``model``, ``train``, ``sample``,
``evaluate``, ``mlflow``, ... Every key is checked when the file is loaded: an unknown key (with
the closest known key suggested), a wrong type or an out-of-range value raises ``ConfigError``
naming the key, the value and what is accepted, before any expensive work starts.

Fields whose value is ``auto`` take the ``recipe``'s setting, else a per-dataset default, else
``BASE_DEFAULTS`` (all in ``defaults``); ``load_params`` resolves them, except the keys that
``roles.KEY_ROLES`` gives to a stage: the machine's (``RUNTIME_RESOLVED``, the train stage), the
training data's (``TRAIN_RESOLVED``, the train stage, stored with the model), the stored noise
levels' (``SAMPLE_RESOLVED``, the sample stage) and the raw data's (``PREPARE_RESOLVED``, the
prepare stage, recorded in ``meta.json``). Each family resolves and accepts only its own keys
(``families``).

One job per module: ``schema`` (the dataclasses and ``Params``), ``checks`` (refusals and the
fields' bounds), ``coercion`` (raw values -> typed fields), ``loading`` (the YAML file),
``defaults`` (what ``auto`` takes: recipes, datasets, families), ``families``, ``roles`` (what a
key is to a trained model), ``quality`` (the sample-quality vocabulary). Every name importers
use is re-exported here. Nothing here imports torch: the prepare stage loads params too.
"""

from ddpm.config.checks import AUTO, Auto
from ddpm.config.defaults import (
    BASE_DEFAULTS,
    DATASET_DEFAULTS,
    DEFAULT_BOUND_STRATA,
    FOLDER_IMAGE_SIZES,
    NCSN_LOW_DIM,
    NCSN_LOW_DIM_LEVELS,
    RECIPES,
    SDE_COMMON,
    SDE_SAMPLING_EPS,
    SDE_TYPE_KEYS,
    SIGMA_MIN,
    Recipe,
    default_setting,
    recipe_settings,
)
from ddpm.config.families import FAMILIES, FAMILY_SAMPLERS, FamilyFacts
from ddpm.config.loading import ParamsLoader, load_params
from ddpm.config.quality import (
    QUALITY_FAMILIES,
    SAMPLERS,
    default_quality_metrics,
    parse_sampler_setting,
    quality_families_for,
)
from ddpm.config.roles import (
    BY_DATA,
    BY_MACHINE,
    BY_PARAMS,
    BY_PREPARE,
    BY_SAMPLE,
    DOWNSTREAM,
    KEY_ROLES,
    NETWORK,
    PREPARE_RESOLVED,
    RUNTIME,
    RUNTIME_RESOLVED,
    SAMPLE_RESOLVED,
    TRAIN_RESOLVED,
    TRAINING,
    KeyRole,
    changes_training,
    key_role,
    resolved_by,
)
from ddpm.config.schema import (
    BETA_SCHEDULES,
    ClassifierConfig,
    DataConfig,
    DiffusionConfig,
    EvaluateConfig,
    MlflowConfig,
    ModelConfig,
    NcsnConfig,
    OdeConfig,
    Params,
    QualityConfig,
    SampleConfig,
    SdeConfig,
    TrainConfig,
)
from ddpm.errors import ConfigError

# fmt: off
__all__ = [
    "AUTO", "Auto", "BASE_DEFAULTS", "BETA_SCHEDULES", "BY_DATA", "BY_MACHINE", "BY_PARAMS", "BY_PREPARE", "BY_SAMPLE",
    "DATASET_DEFAULTS", "DEFAULT_BOUND_STRATA", "DOWNSTREAM", "FAMILIES", "FAMILY_SAMPLERS", "FOLDER_IMAGE_SIZES",
    "KEY_ROLES", "NCSN_LOW_DIM", "NCSN_LOW_DIM_LEVELS", "NETWORK", "PREPARE_RESOLVED", "QUALITY_FAMILIES", "RECIPES",
    "RUNTIME", "RUNTIME_RESOLVED", "SAMPLERS", "SAMPLE_RESOLVED", "SDE_COMMON", "SDE_SAMPLING_EPS", "SDE_TYPE_KEYS",
    "SIGMA_MIN", "TRAINING", "TRAIN_RESOLVED", "ClassifierConfig", "ConfigError", "DataConfig", "DiffusionConfig",
    "EvaluateConfig", "FamilyFacts", "KeyRole", "MlflowConfig", "ModelConfig", "NcsnConfig", "OdeConfig", "Params",
    "ParamsLoader", "QualityConfig", "Recipe", "SampleConfig", "SdeConfig", "TrainConfig", "changes_training",
    "default_quality_metrics", "default_setting", "key_role", "load_params", "parse_sampler_setting",
    "quality_families_for", "recipe_settings", "resolved_by",
]
# fmt: on
