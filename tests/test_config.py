"""params.yaml -> typed config: every user error names the key, the value and what is accepted."""

import pytest
import yaml

from ddpm.config import DATASET_DEFAULTS, ConfigError, Params, load_params

REPO_PARAMS = "params.yaml"


def test_repository_params_load_and_resolve_every_auto():
    params = load_params(REPO_PARAMS)
    assert params.dataset == "digits"
    assert "auto" not in [v for v in params.flatten().values() if isinstance(v, str) and v == "auto"
                          and not isinstance(v, bool)] or params.train.precision == "auto"
    for key, value in DATASET_DEFAULTS["digits"].items():
        section, name = key.split(".")
        assert getattr(getattr(params, section), name) == value


def test_repository_params_file_lists_every_field():
    """params.yaml shows every key (so `dvc exp run -S key=...` has something to override)."""
    raw = yaml.safe_load(open(REPO_PARAMS))
    flat = Params.from_dict(raw, resolve=False).flatten()
    listed = {k for k, v in raw.items() if not isinstance(v, dict)}
    listed |= {f"{s}.{k}" for s, sec in raw.items() if isinstance(sec, dict) for k in sec}
    assert listed == set(flat)


def test_cifar10_gets_ddpm_settings():
    p = Params.from_dict({"dataset": "cifar10"})
    assert (p.model.base_channels, p.model.channel_mult, p.model.attn_resolutions) == (128, (1, 2, 2, 2), (16,))
    assert (p.train.lr, p.train.batch_size, p.train.ema_decay, p.train.hflip) == (2e-4, 128, 0.9999, True)


def test_explicit_values_override_auto():
    p = Params.from_dict({"train": {"lr": 3e-4}, "model": {"channel_mult": [1, 1]}})
    assert p.train.lr == 3e-4 and p.model.channel_mult == (1, 1)


def test_flatten_and_round_trip():
    p = Params.from_dict({"beta_schedule": "cosine", "train": {"steps": 7}})
    flat = p.flatten()
    assert flat["beta_schedule"] == "cosine" and flat["train.steps"] == 7
    assert Params.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("raw, fragments", [
    ({"beta_schedul": "cosine"}, ["unknown key 'beta_schedul'", "did you mean 'beta_schedule'"]),
    ({"train": {"learning_rate": 1e-3}}, ["unknown key 'train.learning_rate'", "train.lr"]),
    ({"trian": {}}, ["unknown key 'trian'", "did you mean 'train'"]),
    ({"timesteps": "many"}, ["timesteps='many'", "an integer"]),
    ({"timesteps": 0}, ["timesteps=0", ">= 1"]),
    ({"beta_end": 1.5}, ["beta_end=1.5", "(0, 1)"]),
    ({"beta_start": 0}, ["beta_start=0", "(0, 1)"]),
    ({"beta_schedule": "cosinus"}, ["beta_schedule='cosinus'", "linear", "cosine", "sigmoid", "jsd"]),
    ({"dataset": "imagenet"}, ["dataset='imagenet'", "digits", "cifar10"]),
    ({"mean_type": "epsilon"}, ["mean_type='epsilon'", "eps", "x0", "v"]),
    ({"var_type": "learned_range"}, ["loss_type='simple'", "hybrid"]),
    ({"beta_schedule": "jsd"}, ["mean_type='eps'", "jsd"]),
    ({"train": {"lr": "fast"}}, ["train.lr='fast'", "a number or auto"]),
    ({"train": {"batch_size": 0}}, ["train.batch_size=0", ">= 1"]),
    ({"train": {"hflip": "yes"}}, ["train.hflip='yes'", "true or false"]),
    ({"model": {"channel_mult": [1, "a"]}}, ["model.channel_mult=[1, 'a']", "list of integers"]),
    ({"model": {"dropout": 1.0}}, ["model.dropout=1.0", "[0, 1)"]),
    ({"sample": {"steps": 2000}}, ["sample.steps=2000", "timesteps=1000"]),
    ({"sample": {"sampler": "euler"}}, ["sample.sampler='euler'", "ancestral", "ddim"]),
    ({"model": 3}, ["model", "expected a section"]),
])
def test_bad_params_name_key_value_and_accepted(raw, fragments):
    with pytest.raises(ConfigError) as err:
        Params.from_dict(raw)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_missing_or_broken_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
