"""Recipes (ddpm.config.defaults): each fills the keys left at auto, and a value the user sets wins."""

from __future__ import annotations

import pytest
import torch

from ddpm.config import BASE_DEFAULTS, DATASET_DEFAULTS, RECIPES, ConfigError, Params, load_params
from ddpm.pipeline.build import data_resolved_params


def value_of(params: Params, key: str):
    if key == "dataset":
        return params.dataset
    if "." not in key:
        return getattr(params.diffusion, key)
    section, name = key.split(".")
    return getattr(getattr(params, section), name)


def resolve(recipe: str, **raw) -> Params:
    """The params as the train stage uses them: loaded, then the train stage's keys (the batch)
    resolved from a training split larger than any batch. dataset=folder needs no folder to
    resolve (the prepare stage checks the folder)."""
    return data_resolved_params(Params.from_dict({"recipe": recipe, **raw}), torch.zeros(100_000, 2))


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_setting_lands_in_the_resolved_params(name):
    params = resolve(name)
    for key, value in RECIPES[name].settings.items():
        assert value_of(params, key) == value, key
    # What the recipe leaves open follows the dataset, then the base defaults.
    dataset_defaults = DATASET_DEFAULTS[params.dataset]
    for key, value in {**BASE_DEFAULTS, **dataset_defaults}.items():
        if key not in RECIPES[name].settings:
            expected = dataset_defaults.get(key, value)
            assert value_of(params, key) == (params.dataset if key == "dataset" else expected), key


def test_the_default_recipe_is_ddpm_and_changes_nothing():
    """The repository's params.yaml resolves to Ho et al.'s diffusion on digits, as before recipes."""
    params = load_params()
    assert params.recipe == "ddpm" and RECIPES["ddpm"].settings == {}
    d = params.diffusion
    assert (params.dataset, d.beta_schedule, d.timesteps, d.beta_start, d.beta_end) == ("digits", "linear", 1000,
                                                                                        1e-4, 0.02)
    assert (d.mean_type, d.var_type, d.loss_type) == ("eps", "fixed_small", "simple")
    assert (params.train.grad_clip, params.train.loss_norm, params.model.time_embedding) == (1.0, "l2", "sinusoidal")


@pytest.mark.parametrize("name, key, explicit", [
    ("swissroll_sigmoid", "beta_start", 1e-4),
    ("swissroll_sigmoid", "timesteps", 50),
    ("swissroll_sigmoid", "model.time_embedding", "sinusoidal"),
    ("swissroll_rbf", "train.steps", 7),
    ("swissroll_rbf", "model.mlp_hidden", 8),
    ("mnist_shufflenet", "dataset", "fashion_mnist"),
    ("lucidrains_folder", "train.loss_norm", "l2"),
    ("sohl_dickstein", "timesteps", 100),
    ("vlb", "loss_type", "simple"),
])
def test_a_value_set_by_the_user_beats_the_recipe(name, key, explicit):
    raw: dict = {}
    if "." in key:
        section, field = key.split(".")
        raw[section] = {field: explicit}
    else:
        raw[key] = explicit
    params = resolve(name, **raw)
    assert value_of(params, key) == explicit
    # The recipe's other settings still apply.
    for other, value in RECIPES[name].settings.items():
        if other != key:
            assert value_of(params, other) == value, other


def test_a_value_equal_to_the_base_default_still_beats_the_recipe():
    """Explicit means explicit, even when it equals what `auto` would give without a recipe."""
    assert resolve("swissroll_sigmoid", beta_start=1e-4, timesteps=1000).diffusion.timesteps == 1000
    assert resolve("swissroll_sigmoid", beta_start=1e-4).diffusion.beta_start == 1e-4


def test_recipe_from_the_command_line(tmp_path):
    """As `dvc exp run -S recipe=swissroll_sigmoid -S beta_start=0.00001` writes params.yaml."""
    path = tmp_path / "params.yaml"
    path.write_text("recipe: swissroll_sigmoid\nbeta_start: 1e-05\ntrain:\n  steps: 8e3\n")
    params = load_params(path)
    assert params.dataset == "swissroll" and params.diffusion.beta_start == 1e-5 and params.train.steps == 8000


def test_unknown_recipe_names_the_key_and_the_accepted_values():
    with pytest.raises(ConfigError) as err:
        Params.from_dict({"recipe": "ddpm2"})
    assert "recipe='ddpm2' is not accepted" in str(err.value)
    assert all(name in str(err.value) for name in RECIPES)


def test_a_recipe_setting_that_conflicts_with_a_user_value_is_refused_naming_the_key():
    # swissroll_rbf learns the variance (two heads); the simple loss cannot train it.
    with pytest.raises(ConfigError, match=r"loss_type='simple' is not accepted"):
        resolve("swissroll_rbf", loss_type="simple")


def test_resolved_params_of_a_recipe_load_back_unchanged():
    """A checkpoint stores the resolved params; they must load back to the same config."""
    for name in RECIPES:
        params = resolve(name)
        assert Params.from_dict(params.to_dict()) == params
