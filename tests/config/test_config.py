"""params.yaml -> typed config: every user error names the key, the value and what is accepted."""

import math
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import pytest
import torch
import yaml

from ddpm.config import (
    DATASET_DEFAULTS,
    RUNTIME_RESOLVED,
    ConfigError,
    DiffusionConfig,
    NcsnConfig,
    Params,
    ParamsLoader,
    SdeConfig,
    load_params,
    parse_sampler_setting,
)
from ddpm.data import DATASETS
from ddpm.pipeline.build import data_resolved_params

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
# The train stage resolves these on the machine that trains and stores what it used with the
# model (ddpm.training.loop.resolved_params); every other `auto` is resolved when params load.
RUNTIME_KEYS = {"train.precision", "train.device", "train.channels_last"}
# And these from the data: the train stage caps the batch at the training split and stores it
# with the model (ddpm.pipeline.build.data_resolved_params), the prepare stage holds out a tenth of a
# folder and records it in meta.json (ddpm.data.prepare.auto_test_size).
DATA_KEYS = {"train.batch_size", "data.test_size"}
# With family=ddpm and sample.sampler=ancestral, the keys of the other families and of the pc
# sampler do not apply and stay auto.
UNUSED_BY_DDPM = ({f"sde.{f.name}" for f in fields(SdeConfig)} | {f"ncsn.{f.name}" for f in fields(NcsnConfig)}
                  | {"sample.predictor", "sample.corrector", "sample.snr"})


def accepts_auto(hint) -> bool:
    if get_origin(hint) is Literal:
        return "auto" in get_args(hint)
    return any(accepts_auto(arg) for arg in get_args(hint))


def every_key_auto(dataset: str) -> dict:
    """A params mapping with `auto` in every key that accepts it (by type, or by default for
    the free-form train.device)."""
    raw: dict = {"dataset": dataset}
    raw.update({f.name: "auto" for f in fields(DiffusionConfig)})  # the diffusion's keys sit at the top level
    for section, section_type in get_type_hints(Params).items():
        if section not in ("recipe", "dataset", "seed", "family", "diffusion"):
            hints = get_type_hints(section_type)
            raw[section] = {f.name: "auto" for f in fields(section_type)
                            if accepts_auto(hints[f.name]) or f.default == "auto"}
    return raw


def test_runtime_resolved_keys_are_the_machine_dependent_ones():
    assert set(RUNTIME_RESOLVED) == RUNTIME_KEYS


@pytest.mark.parametrize("dataset", DATASETS)
def test_resolved_leaves_auto_only_in_the_runtime_resolved_keys(dataset):
    raw = every_key_auto(dataset)
    assert {f"train.{k}" for k in raw["train"]} >= RUNTIME_KEYS  # the mapping really holds them as auto
    flat = Params.from_dict(raw).flatten()
    assert {key for key, value in flat.items() if value == "auto"} == RUNTIME_KEYS | DATA_KEYS | UNUSED_BY_DDPM
    for key, value in DATASET_DEFAULTS[dataset].items():
        assert flat[key] == ("auto" if key in DATA_KEYS else list(value) if isinstance(value, tuple) else value)


def test_repository_params_load_and_resolve_every_auto_but_the_runtime_keys():
    params = load_params(REPO_PARAMS)
    assert params.dataset == "digits"
    flat = params.flatten()
    assert {key for key, value in flat.items() if value == "auto"} == RUNTIME_KEYS | DATA_KEYS | UNUSED_BY_DDPM
    for key, value in DATASET_DEFAULTS["digits"].items():
        section, name = key.split(".")
        assert getattr(getattr(params, section), name) == ("auto" if key in DATA_KEYS else value)


def test_repository_params_file_lists_every_field():
    """params.yaml shows every key (so `dvc exp run -S key=...` has something to override)."""
    raw = yaml.load(REPO_PARAMS.read_text(), Loader=ParamsLoader)
    flat = Params.from_dict(raw, resolve=False).flatten()
    listed = {k for k, v in raw.items() if not isinstance(v, dict)}
    listed |= {f"{s}.{k}" for s, sec in raw.items() if isinstance(sec, dict) for k in sec}
    assert listed == set(flat)


def test_cifar10_gets_ddpm_settings():
    p = Params.from_dict({"dataset": "cifar10"})
    assert (p.model.base_channels, p.model.channel_mult, p.model.attn_resolutions) == (128, (1, 2, 2, 2), (16,))
    assert (p.train.lr, p.train.ema_decay, p.train.hflip) == (2e-4, 0.9999, True)
    # The batch is DDPM's 128 for CIFAR-10's 50,000 training images (the train stage caps it at the split).
    assert p.train.batch_size == "auto"
    assert data_resolved_params(p, torch.zeros(50_000, 1)).train.batch_size == 128


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
    ({"seed": -1}, ["seed=-1", "an integer >= 0"]),
    ({"beta_end": 1.5}, ["beta_end=1.5", "(0, 1)"]),
    ({"beta_start": 0}, ["beta_start=0", "(0, 1)"]),
    ({"beta_schedule": "cosinus"}, ["beta_schedule='cosinus'", "linear", "cosine", "sigmoid", "jsd"]),
    ({"dataset": "imagenet"}, ["dataset='imagenet'", "digits", "cifar10"]),
    ({"mean_type": "epsilon"}, ["mean_type='epsilon'", "eps", "x0", "v"]),
    ({"var_type": "learned_range"}, ["loss_type='simple'", "hybrid"]),
    ({"beta_schedule": "jsd"}, ["mean_type='eps'", "jsd"]),
    ({"train": {"lr": "fast"}}, ["train.lr='fast'", "a number or auto"]),
    ({"train": {"batch_size": 0}}, ["train.batch_size=0", ">= 1"]),
    ({"train": {"batch_size": "all"}}, ["train.batch_size='all'", "an integer or auto"]),
    ({"data": {"test_size": -1}}, ["data.test_size=-1", "an integer >= 0", "or auto"]),
    ({"data": {"test_size": "tenth"}}, ["data.test_size='tenth'", "an integer or auto"]),
    ({"data": {"test_size": 2.5}}, ["data.test_size=2.5", "an integer or auto"]),
    ({"train": {"hflip": "yes"}}, ["train.hflip='yes'", "true or false"]),
    ({"model": {"channel_mult": [1, "a"]}}, ["model.channel_mult=[1, 'a']", "list of integers"]),
    ({"model": {"dropout": 1.0}}, ["model.dropout=1.0", "[0, 1)"]),
    ({"sample": {"steps": 2000}}, ["sample.steps=2000", "timesteps=1000"]),
    ({"sample": {"sampler": "euler"}}, ["sample.sampler='euler'", "ancestral", "ddim", "pc", "ode", "ald"]),
    ({"model": 3}, ["model", "expected a section"]),
    ({"train": {"bound_every": -1}}, ["train.bound_every=-1", ">= 0 (0 = off)"]),
    ({"timesteps": 20, "train": {"bound_strata": 21}}, ["train.bound_strata=21", "1..timesteps=20"]),
    ({"train": {"bound_images": 0}}, ["train.bound_images=0", ">= 1"]),
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


# --- numbers as DVC and people write them ---------------------------------------------------


@pytest.mark.parametrize("spelling, value", [
    ("1e-05", 1e-5), ("1E-5", 1e-5), ("1.0e-5", 1e-5), ("1.e-5", 1e-5), ("+1e-5", 1e-5), ("1e-5", 1e-5),
    (".1e-4", 1e-5), ("0.00001", 1e-5), ("1.0E-05", 1e-5), ("0.5", 0.5), (".5", 0.5), ("5e-1", 0.5),
])
def test_params_file_reads_yaml_12_float_spellings_as_numbers(tmp_path, spelling, value):
    path = tmp_path / "params.yaml"
    path.write_text(f"beta_start: {spelling}\ntrain:\n  lr: {spelling}\n")
    params = load_params(path)
    assert params.diffusion.beta_start == value and params.train.lr == value


@pytest.mark.parametrize("spelling, value", [("1e5", 1e5), ("5.", 5.0), ("+2E+1", 20.0), ("-0.5e1", -5.0),
                                             ("1_000.5", 1000.5), (".inf", math.inf), ("-.Inf", -math.inf),
                                             ("3", 3), ("0x10", 16)])
def test_params_loader_numbers(spelling, value):
    loaded = yaml.load(f"x: {spelling}", Loader=ParamsLoader)["x"]
    assert loaded == value and type(loaded) is type(value)


@pytest.mark.parametrize("text", ["1e", "e5", "1.2.3", "1e-5x", "'1e-5'", '"1e-05"', ".", "+.e5", "1:e5"])
def test_params_loader_keeps_non_numbers_as_strings(text):
    assert isinstance(yaml.load(f"x: {text}", Loader=ParamsLoader)["x"], str)


def test_params_loader_reads_nan():
    assert math.isnan(yaml.load("x: .nan", Loader=ParamsLoader)["x"])


def test_quoted_number_is_text_and_refused_where_a_number_is_expected(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text('beta_start: "1e-5"\n')
    with pytest.raises(ConfigError, match=r"beta_start='1e-5' is not accepted; expected a number"):
        load_params(path)


def test_integer_fields_take_integral_floats(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("timesteps: 1.0e3\nseed: 7.0\ntrain:\n  steps: 8e5\n  batch_size: 64.0\n"
                    "model:\n  channel_mult: [1, 2.0]\n")
    params = load_params(path)
    values = (params.diffusion.timesteps, params.seed, params.train.steps, params.train.batch_size,
              *params.model.channel_mult)
    assert values == (1000, 7, 800000, 64, 1, 2)
    assert all(type(v) is int for v in values)


@pytest.mark.parametrize("raw, fragments", [
    ({"train": {"steps": 1.5}}, ["train.steps=1.5", "an integer or auto"]),
    ({"timesteps": 1e3 + 0.5}, ["timesteps=1000.5", "an integer"]),
    ({"seed": math.inf}, ["seed=inf", "an integer"]),
    ({"model": {"channel_mult": [1, 2.5]}}, ["model.channel_mult=[1, 2.5]", "list of integers"]),
])
def test_integer_fields_refuse_fractional_and_infinite_floats(raw, fragments):
    with pytest.raises(ConfigError) as err:
        Params.from_dict(raw)
    assert all(fragment in str(err.value) for fragment in fragments)


@pytest.mark.parametrize("raw, fragments", [
    ({"train": {"lr": math.inf}}, ["train.lr=inf", "(0, 1)"]),
    ({"train": {"lr": math.nan}}, ["train.lr=nan", "(0, 1)"]),
    ({"beta_start": math.nan}, ["beta_start=nan", "(0, 1)"]),
    ({"model": {"dropout": math.inf}}, ["model.dropout=inf", "[0, 1)"]),
    ({"train": {"ema_decay": math.nan}}, ["train.ema_decay=nan", "[0, 1)"]),
    ({"train": {"grad_clip": math.inf}}, ["train.grad_clip=inf", "a finite number >= 0", "0 disables"]),
    ({"train": {"hybrid_lambda": math.inf}}, ["train.hybrid_lambda=inf", "a finite number >= 0"]),
    ({"sample": {"eta": math.nan}}, ["sample.eta=nan", "a finite number >= 0"]),
    ({"data": {"swissroll_noise": math.inf}}, ["data.swissroll_noise=inf", "a finite number >= 0"]),
])
def test_non_finite_numbers_are_refused_naming_the_key(raw, fragments):
    with pytest.raises(ConfigError) as err:
        Params.from_dict(raw)
    assert all(fragment in str(err.value) for fragment in fragments)


# --- combinations that would train something else than asked ---------------------------------


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_hybrid_loss_with_a_fixed_variance_is_refused(var_type):
    with pytest.raises(ConfigError) as err:
        Params.from_dict({"var_type": var_type, "loss_type": "hybrid"})
    message = str(err.value)
    assert "loss_type='hybrid'" in message and f"var_type={var_type}" in message
    assert "'simple' or 'vlb'" in message and "learned_range" in message


@pytest.mark.parametrize("var_type, loss_type", [("fixed_small", "simple"), ("fixed_large", "vlb"),
                                                 ("learned_range", "hybrid"), ("learned_range", "vlb")])
def test_variance_and_loss_combinations_that_train_what_they_say_are_accepted(var_type, loss_type):
    d = Params.from_dict({"var_type": var_type, "loss_type": loss_type}).diffusion
    assert (d.var_type, d.loss_type) == (var_type, loss_type)


# ---------------------------------------------------------------------- sample quality
@pytest.mark.parametrize("raw, fragments", [
    ({"quality": {"metrics": ["raw"]}}, ["quality.metrics=['raw']", "dataset=digits can serve: classifier"]),
    ({"dataset": "swissroll", "quality": {"metrics": ["classifier"]}}, ["dataset=swissroll can serve: raw"]),
    ({"quality": {"metrics": ["inception"]}}, ["dataset=digits can serve: classifier", "3-channel"]),
    ({"quality": {"metrics": ["fid"]}}, ["families from classifier, inception, raw"]),
    ({"quality": {"sweep": ["ddim:0"]}}, ["quality.sweep entry 'ddim:0'", "e.g. ddim:50"]),
    ({"quality": {"sweep": ["euler:10"]}}, ["quality.sweep entry 'euler:10'", "ancestral, ddim"]),
    ({"quality": {"sweep": "ddim:10"}}, ["quality.sweep='ddim:10'", "a list of strings"]),
    ({"quality": {"kid_subset_size": 300}}, ["quality.kid_subset_size=300", "2..sample.num_samples=256",
                                             "draw more samples"]),
    ({"sample": {"num_samples": 1}}, ["sample.num_samples=1", "KID compares pairs"]),
    ({"classifier": {"feature_dim": 0}}, ["classifier.feature_dim=0"]),
])
def test_quality_params_that_cannot_be_served_name_key_value_and_accepted(raw, fragments):
    with pytest.raises(ConfigError) as err:
        Params.from_dict(raw)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_quality_auto_takes_the_families_the_dataset_serves_and_resolved_params_load_back():
    for dataset, families in (("digits", ("classifier",)), ("swissroll", ("raw",)),
                              ("cifar10", ("classifier", "inception"))):
        resolved = Params.from_dict({"dataset": dataset})
        assert resolved.quality.metrics == families
        # A checkpoint stores the resolved params; they must load back (cifar10 lists inception
        # without weights: the quality stage skips it with a line, the params are not refused).
        assert Params.from_dict(resolved.to_dict()) == resolved


@pytest.mark.parametrize("cli_value, sweep", [
    ("[ddim:10, ddim:25]", ("ddim:10", "ddim:25")),  # as `dvc exp run -S 'quality.sweep=[ddim:10,ddim:25]'` writes it
    ("[]", ()),
    ("[ancestral, ancestral:100]", ("ancestral", "ancestral:100")),
])
def test_quality_sweep_from_the_command_line(tmp_path, cli_value, sweep):
    path = tmp_path / "params.yaml"
    path.write_text(f"quality:\n  sweep: {cli_value}\n")
    assert load_params(path).quality.sweep == sweep


def test_sweep_steps_beyond_the_timesteps_mean_all_of_them():
    assert parse_sampler_setting("ddim:100", 50) == ("ddim", 0) == parse_sampler_setting("ddim:50", 50)
    assert parse_sampler_setting("ddim:20", 50) == ("ddim", 20)
    assert parse_sampler_setting("ancestral", 50) == ("ancestral", 0)
    Params.from_dict({"timesteps": 50})  # the default sweep (up to ddim:100) stays valid


# ---------------------------------------------------------------------- families (ddpm, sde, ncsn)
def test_each_family_resolves_its_own_keys_and_leaves_the_others_auto():
    sde = Params.from_dict({"family": "sde", "sde": {"type": "subvp"}})
    assert (sde.sample.sampler, sde.sample.predictor, sde.sample.corrector) == ("pc", "euler_maruyama", "none")
    assert (sde.sde.beta_min, sde.sde.beta_max, sde.sde.num_scales, sde.sde.weighting, sde.sde.eps) == (
        0.1, 20.0, 1000, "sigma2", 1e-5)
    assert sde.sde.sigma_min == sde.sde.sigma_max == "auto"  # VE's keys
    assert (sde.diffusion.mean_type, sde.diffusion.var_type, sde.diffusion.loss_type) == ("auto",) * 3
    assert sde.ode.sample_eps == 1e-3 and sde.ode.divergence == "hutchinson"
    ve = Params.from_dict({"family": "sde", "sde": {"type": "ve"}, "dataset": "swissroll"})
    assert (ve.sample.predictor, ve.sample.corrector, ve.sample.snr) == ("reverse_diffusion", "annealed_langevin", 0.16)
    # score_sde's sigma_min = 0.01 is on data in [0, 1]; in this project's [-1, 1] the same relative noise is 0.02.
    assert ve.sde.sigma_min == 0.02 and ve.sde.sigma_max == "auto"  # the train stage derives it from the data
    assert ve.ode.sample_eps == 1e-5 and ve.ode.divergence == "exact"  # D = 2: the exact trace is cheap
    ncsn = Params.from_dict({"family": "ncsn"})
    assert ncsn.sample.sampler == "ald" and ncsn.sde.type == "auto"
    assert (ncsn.ncsn.sigma_min, ncsn.ncsn.denoise, ncsn.ncsn.init) == (0.02, True, "uniform")  # NCSN's 0.01 on [0, 1]
    assert ncsn.ncsn.num_levels == ncsn.ncsn.sigma_max == ncsn.ncsn.step_lr == "auto"
    ddpm = Params.from_dict({"sample": {"sampler": "ode"}, "timesteps": 50})
    assert ddpm.ode.sample_eps == 1 / 50  # the VP-type SDE of the discrete diffusion starts at its first knot


def test_resolved_family_params_load_back_unchanged():
    for raw in ({"family": "sde", "sde": {"type": "ve"}}, {"family": "ncsn"},
                {"sample": {"sampler": "pc", "predictor": "ancestral"}}):
        p = Params.from_dict(raw)
        assert Params.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("raw, fragments", [
    ({"family": "diffusion"}, ["family='diffusion'", "ddpm", "sde", "ncsn"]),
    ({"family": "sde", "sample": {"sampler": "ancestral"}},
     ["sample.sampler='ancestral'", "family=sde can run: pc, ode"]),
    ({"family": "ncsn", "sample": {"sampler": "pc"}}, ["sample.sampler='pc'", "family=ncsn can run: ald"]),
    ({"sample": {"sampler": "ald"}}, ["sample.sampler='ald'", "family=ddpm can run: ancestral, ddim, pc, ode"]),
    ({"family": "sde", "sde": {"sigma_max": 50}}, ["sde.sigma_max=50", "sde.type=vp", "belongs to sde.type ve"]),
    ({"family": "sde", "sde": {"type": "ve", "beta_max": 10}}, ["sde.beta_max=10", "sde.type=ve", "vp, subvp"]),
    ({"sde": {"type": "ve"}}, ["sde.type='ve'", "family=ddpm", "family=sde"]),
    ({"family": "sde", "ncsn": {"num_levels": 10}}, ["ncsn.num_levels=10", "family=sde", "family=ncsn"]),
    ({"family": "ncsn", "loss_type": "vlb"}, ["loss_type='vlb'", "auto with family=ncsn"]),
    ({"family": "sde", "mean_type": "x0"}, ["mean_type='x0'", "auto with family=sde"]),
    ({"family": "sde", "sde": {"beta_min": 30}}, ["sde.beta_max=20.0", "> sde.beta_min=30"]),
    ({"family": "sde", "sde": {"type": "ve", "sigma_max": 0.001}}, ["sde.sigma_max=0.001", "> sde.sigma_min=0.02"]),
    ({"family": "sde", "sde": {"num_scales": 10}}, ["sde.num_scales=10", "> sde.beta_max=20"]),
    ({"family": "sde", "sde": {"type": "subvp"}, "sample": {"predictor": "ancestral"}},
     ["sample.predictor='ancestral'", "sub-VP has no ancestral chain"]),
    ({"sample": {"sampler": "pc", "predictor": "reverse_diffusion", "steps": 100}},
     ["sample.steps=100", "0 or timesteps=1000"]),
    ({"sample": {"predictor": "euler_maruyama"}}, ["sample.predictor='euler_maruyama'", "unless sample.sampler=pc"]),
    ({"sample": {"sampler": "pc", "snr": 0}}, ["sample.snr=0", "> 0"]),
    ({"ode": {"rtol": 0}}, ["ode.rtol=0", "a finite number > 0"]),
    ({"ode": {"atol": -1e-5}}, ["ode.atol=-1e-05", "tolerance"]),
    ({"ode": {"eps": 1.5}}, ["ode.eps=1.5", "(0, 1)"]),
    ({"ode": {"divergence": "trace"}}, ["ode.divergence='trace'", "exact", "hutchinson"]),
    ({"ode": {"num_images": -1}}, ["ode.num_images=-1", ">= 0"]),
    ({"ode": {"denoise": "yes"}}, ["ode.denoise='yes'", "true or false"]),
    ({"ode": {"denoise": 1}}, ["ode.denoise=1", "true or false"]),
    ({"family": "ncsn", "ncsn": {"num_levels": 1}}, ["ncsn.num_levels=1", ">= 2"]),
    ({"family": "ncsn", "ncsn": {"sigma_max": 0.005}}, ["ncsn.sigma_max=0.005", "> ncsn.sigma_min=0.02"]),
])
def test_bad_family_settings_name_key_value_and_accepted(raw, fragments):
    with pytest.raises(ConfigError) as err:
        Params.from_dict(raw)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_sizes_and_the_ode_denoising_step_as_typed_on_the_command_line(tmp_path):
    """`dvc exp run -S data.test_size=auto -S train.batch_size=1e2 -S ode.denoise=false` writes
    these values into params.yaml; each loads as the user meant it."""
    assert Params.from_dict({}).ode.denoise is True  # score_sde's noise_removal, on by default
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  test_size: auto\ntrain:\n  batch_size: 1e2\node:\n  denoise: false\n")
    params = load_params(path)
    assert (params.data.test_size, params.train.batch_size, params.ode.denoise) == ("auto", 100, False)
    path.write_text("data:\n  test_size: 3e1\n")
    assert load_params(path).data.test_size == 30


# Every refusal, word for word: one bad input for each check of the schema, the loader and the
# families (wrong types, quoted and DVC-spelled numbers, ranges, keys of another family or SDE
# type, samplers a family cannot run). A message that changes fails here.
FROZEN_REFUSALS = [
    ([1, 2], "params must be a mapping of keys to values, got list"),
    ('x', "params must be a mapping of keys to values, got str"),
    ({'beta_shedule': 'linear'},
     "unknown key 'beta_shedule'; did you mean 'beta_schedule'? Known keys: beta_end, beta_schedule, "
     "beta_start, classifier, data, dataset, evaluate, family, loss_type, mean_type, mlflow, model, "
     "ncsn, ode, quality, recipe, sample, sde, seed, timesteps, train, var_type"),
    ({'zzz': 1},
     "unknown key 'zzz'. Known keys: beta_end, beta_schedule, beta_start, classifier, data, dataset, "
     "evaluate, family, loss_type, mean_type, mlflow, model, ncsn, ode, quality, recipe, sample, sde, "
     "seed, timesteps, train, var_type"),
    ({'train': {'lrr': 0.1}},
     "unknown key 'train.lrr'; did you mean 'train.lr'? Known keys: train.batch_size, "
     "train.bound_every, train.bound_images, train.bound_strata, train.channels_last, "
     "train.checkpoint_every, train.compile, train.device, train.ema_decay, train.grad_clip, "
     "train.hflip, train.hybrid_lambda, train.log_every, train.loss_norm, train.lr, "
     "train.lr_schedule, train.nproc, train.num_threads, train.precision, train.steps, train.tf32, "
     "train.warmup_steps"),
    ({'train': 5}, "train: expected a section of keys, got 5"),
    ({'train': [1]}, "train: expected a section of keys, got [1]"),
    ({'timesteps': 'ten'}, "timesteps='ten' is not accepted; expected an integer or auto"),
    ({'train': {'lr': '1e-5'}}, "train.lr='1e-5' is not accepted; expected a number or auto"),
    (('yaml', 'beta_start: "1e-5"\n'), "beta_start='1e-5' is not accepted; expected a number or auto"),
    (('yaml', "train: {lr: '0.001'}\n"), "train.lr='0.001' is not accepted; expected a number or auto"),
    ({'train': {'steps': 1.5}}, "train.steps=1.5 is not accepted; expected an integer or auto"),
    ({'seed': True}, "seed=True is not accepted; expected an integer"),
    ({'seed': 1.5}, "seed=1.5 is not accepted; expected an integer"),
    ({'mean_type': 'foo'}, "mean_type='foo' is not accepted; expected one of auto, eps, x0, v"),
    ({'family': 'gan'}, "family='gan' is not accepted; expected one of ddpm, sde, ncsn"),
    ({'model': {'channel_mult': [1, 'a']}},
     "model.channel_mult=[1, 'a'] is not accepted; expected a list of integers or auto"),
    ({'model': {'channel_mult': 3}}, "model.channel_mult=3 is not accepted; expected a list of integers or auto"),
    ({'quality': {'metrics': [1]}}, "quality.metrics=[1] is not accepted; expected a list of strings or auto"),
    ({'quality': {'sweep': 'ddim:10'}}, "quality.sweep='ddim:10' is not accepted; expected a list of strings"),
    ({'train': {'hflip': 'yes'}}, "train.hflip='yes' is not accepted; expected true or false or auto"),
    ({'train': {'hflip': 1}}, "train.hflip=1 is not accepted; expected true or false or auto"),
    ({'sample': {'eta': True}}, "sample.eta=True is not accepted; expected a number"),
    ({'recipe': 'nope'},
     "recipe='nope' is not accepted; expected one of ddpm, vlb, sohl_dickstein, swissroll_sigmoid, "
     "swissroll_rbf, mnist_shufflenet, lucidrains_folder"),
    ({'dataset': 'imagenet'},
     "dataset='imagenet' is not accepted; expected one of digits, swissroll, mnist, fashion_mnist, "
     "cifar10, folder or auto"),
    ({'seed': -1}, "seed=-1 is not accepted; expected an integer >= 0"),
    ({'beta_schedule': 'bogus'},
     "beta_schedule='bogus' is not accepted; expected one of linear, quadratic, cosine, sigmoid, "
     "geometric, constant, jsd, sohl_dickstein"),
    ({'timesteps': 0}, "timesteps=0 is not accepted; expected an integer >= 1"),
    ({'beta_start': 0.0}, "beta_start=0.0 is not accepted; expected a number in the open interval (0, 1)"),
    ({'beta_end': 1.0}, "beta_end=1.0 is not accepted; expected a number in the open interval (0, 1)"),
    (('yaml', 'beta_end: 1e+00\n'), "beta_end=1.0 is not accepted; expected a number in the open interval (0, 1)"),
    ({'family': 'sde', 'mean_type': 'x0'},
     "mean_type='x0' is not accepted; expected auto with family=sde (it trains a noise-predicting "
     "network with its own objective; the key belongs to family=ddpm)"),
    ({'family': 'ncsn', 'loss_type': 'vlb'},
     "loss_type='vlb' is not accepted; expected auto with family=ncsn (it trains a noise-predicting "
     "network with its own objective; the key belongs to family=ddpm)"),
    ({'family': 'sde', 'var_type': 'fixed_small'},
     "var_type='fixed_small' is not accepted; expected auto with family=sde (it trains a "
     "noise-predicting network with its own objective; the key belongs to family=ddpm)"),
    ({'var_type': 'learned_range', 'loss_type': 'simple'},
     "loss_type='simple' is not accepted; expected 'hybrid' or 'vlb' with var_type=learned_range (the "
     "simple loss does not train the variance)"),
    ({'loss_type': 'hybrid'},
     "loss_type='hybrid' is not accepted; expected 'simple' or 'vlb' with var_type=fixed_small (the "
     "hybrid loss's vlb part trains only a learned variance: use var_type=learned_range)"),
    ({'var_type': 'fixed_large', 'loss_type': 'hybrid'},
     "loss_type='hybrid' is not accepted; expected 'simple' or 'vlb' with var_type=fixed_large (the "
     "hybrid loss's vlb part trains only a learned variance: use var_type=learned_range)"),
    ({'beta_schedule': 'jsd', 'mean_type': 'eps'},
     "mean_type='eps' is not accepted; expected 'x0' or 'v' with beta_schedule=jsd (its last beta is "
     "1, so eps cannot recover x0)"),
    ({'beta_schedule': 'jsd'},
     "mean_type='eps' is not accepted; expected 'x0' or 'v' with beta_schedule=jsd (its last beta is "
     "1, so eps cannot recover x0)"),
    ({'data': {'test_size': -1}},
     "data.test_size=-1 is not accepted; expected an integer >= 0 (torchvision datasets: 0 = the "
     "whole official test split) or auto"),
    ({'data': {'swissroll_train_size': 0}}, "data.swissroll_train_size=0 is not accepted; expected an integer >= 1"),
    ({'data': {'swissroll_noise': -0.1}}, "data.swissroll_noise=-0.1 is not accepted; expected a finite number >= 0"),
    ({'data': {'swissroll_noise': float("nan")}},
     "data.swissroll_noise=nan is not accepted; expected a finite number >= 0"),
    (('yaml', 'data: {swissroll_noise: .inf}\n'),
     "data.swissroll_noise=inf is not accepted; expected a finite number >= 0"),
    ({'data': {'image_size': 0}}, "data.image_size=0 is not accepted; expected an integer >= 1"),
    ({'dataset': 'folder', 'data': {'image_size': 48}},
     "data.image_size=48 is not accepted; expected one of 16, 32, 64, 128 for dataset=folder with the "
     "default U-Net (it halves the image 3 times and attends at 16 x 16), or set model.channel_mult "
     "and model.attn_resolutions for this size"),
    ({'dataset': 'folder', 'data': {'image_size': 0}}, "data.image_size=0 is not accepted; expected an integer >= 1"),
    ({'model': {'base_channels': 0}}, "model.base_channels=0 is not accepted; expected an integer >= 1 or auto"),
    ({'model': {'num_res_blocks': 0}}, "model.num_res_blocks=0 is not accepted; expected an integer >= 1 or auto"),
    ({'model': {'channel_mult': []}},
     "model.channel_mult=[] is not accepted; expected a non-empty list of integers >= 1"),
    ({'model': {'channel_mult': [1, 0]}},
     "model.channel_mult=[1, 0] is not accepted; expected a non-empty list of integers >= 1"),
    ({'model': {'attn_resolutions': [0]}},
     "model.attn_resolutions=[0] is not accepted; expected a list of resolutions >= 1 (may be empty)"),
    ({'model': {'dropout': 1.0}}, "model.dropout=1.0 is not accepted; expected a number in [0, 1)"),
    ({'model': {'dropout': -0.1}}, "model.dropout=-0.1 is not accepted; expected a number in [0, 1)"),
    ({'model': {'num_heads': 0}}, "model.num_heads=0 is not accepted; expected an integer >= 1"),
    ({'model': {'mlp_hidden': 0}}, "model.mlp_hidden=0 is not accepted; expected an integer >= 1"),
    ({'model': {'mlp_layers': 0}}, "model.mlp_layers=0 is not accepted; expected an integer >= 1"),
    ({'train': {'steps': 0}}, "train.steps=0 is not accepted; expected an integer >= 1"),
    (('yaml', 'train: {steps: 0e0}\n'), "train.steps=0 is not accepted; expected an integer >= 1"),
    ({'train': {'batch_size': 0}}, "train.batch_size=0 is not accepted; expected an integer >= 1"),
    ({'train': {'warmup_steps': -1}}, "train.warmup_steps=-1 is not accepted; expected an integer >= 0"),
    ({'train': {'lr': 1.0}}, "train.lr=1.0 is not accepted; expected a number in (0, 1)"),
    (('yaml', 'train: {lr: 0e-5}\n'), "train.lr=0.0 is not accepted; expected a number in (0, 1)"),
    ({'train': {'ema_decay': 1.0}}, "train.ema_decay=1.0 is not accepted; expected a number in [0, 1)"),
    ({'train': {'grad_clip': -1.0}},
     "train.grad_clip=-1.0 is not accepted; expected a finite number >= 0 (0 disables clipping)"),
    ({'train': {'grad_clip': float("inf")}},
     "train.grad_clip=inf is not accepted; expected a finite number >= 0 (0 disables clipping)"),
    ({'train': {'hybrid_lambda': -1.0}}, "train.hybrid_lambda=-1.0 is not accepted; expected a finite number >= 0"),
    ({'train': {'device': 'tpu'}}, "train.device='tpu' is not accepted; expected auto, cpu, cuda or cuda:N"),
    ({'train': {'log_every': 0}}, "train.log_every=0 is not accepted; expected an integer >= 1"),
    ({'train': {'checkpoint_every': 0}}, "train.checkpoint_every=0 is not accepted; expected an integer >= 1"),
    ({'train': {'bound_images': 0}}, "train.bound_images=0 is not accepted; expected an integer >= 1"),
    ({'train': {'bound_every': -1}},
     "train.bound_every=-1 is not accepted; expected an integer >= 0 (0 = off) or auto"),
    ({'train': {'bound_strata': 0}}, "train.bound_strata=0 is not accepted; expected an integer in 1..timesteps=1000"),
    ({'train': {'bound_strata': 11}, 'timesteps': 10},
     "train.bound_strata=11 is not accepted; expected an integer in 1..timesteps=10"),
    ({'train': {'num_threads': -1}},
     "train.num_threads=-1 is not accepted; expected an integer >= 0 (0 = torch's default)"),
    ({'train': {'nproc': 0}}, "train.nproc=0 is not accepted; expected an integer >= 1 (processes on this machine)"),
    ({'sample': {'num_samples': 0}}, "sample.num_samples=0 is not accepted; expected an integer >= 1"),
    ({'sample': {'num_samples': 1}},
     "sample.num_samples=1 is not accepted; expected an integer >= 2 (KID compares pairs of samples)"),
    ({'sample': {'batch_size': 0}}, "sample.batch_size=0 is not accepted; expected an integer >= 1"),
    ({'sample': {'steps': -1}}, "sample.steps=-1 is not accepted; expected an integer in 0..timesteps=1000 (0 = all)"),
    ({'sample': {'steps': 1001}},
     "sample.steps=1001 is not accepted; expected an integer in 0..timesteps=1000 (0 = all)"),
    ({'family': 'sde', 'sample': {'steps': -1}},
     "sample.steps=-1 is not accepted; expected an integer >= 0 (0 = sde.num_scales)"),
    ({'sample': {'eta': -1.0}}, "sample.eta=-1.0 is not accepted; expected a finite number >= 0"),
    ({'sample': {'trajectory_frames': 1}}, "sample.trajectory_frames=1 is not accepted; expected an integer >= 2"),
    ({'evaluate': {'num_images': -1}},
     "evaluate.num_images=-1 is not accepted; expected an integer >= 0 (0 = the whole test split)"),
    ({'evaluate': {'batch_size': 0}}, "evaluate.batch_size=0 is not accepted; expected an integer >= 1"),
    ({'mlflow': {'experiment': '  '}}, "mlflow.experiment='  ' is not accepted; expected a non-empty name"),
    ({'classifier': {'steps': -1}},
     "classifier.steps=-1 is not accepted; expected an integer >= 0 (0: no classifier) or auto"),
    ({'classifier': {'batch_size': 0}}, "classifier.batch_size=0 is not accepted; expected an integer >= 1"),
    ({'classifier': {'width': 0}}, "classifier.width=0 is not accepted; expected an integer >= 1"),
    ({'classifier': {'feature_dim': 0}}, "classifier.feature_dim=0 is not accepted; expected an integer >= 1"),
    ({'classifier': {'lr': 1.0}}, "classifier.lr=1.0 is not accepted; expected a number in (0, 1)"),
    ({'quality': {'metrics': ['bogus']}},
     "quality.metrics=['bogus'] is not accepted; expected a list of families from classifier, "
     "inception, raw, or auto"),
    ({'quality': {'metrics': ['inception']}},
     "quality.metrics=['inception'] is not accepted; expected families that dataset=digits can serve: "
     "classifier ('inception' serves 3-channel image datasets (FID, KID and IS with "
     "quality.inception_weights))"),
    ({'dataset': 'swissroll', 'quality': {'metrics': ['classifier']}},
     "quality.metrics=['classifier'] is not accepted; expected families that dataset=swissroll can "
     "serve: raw ('classifier' serves labelled image datasets (a Frechet distance, KID, "
     "precision/recall, density/coverage and the label distribution in the features of the classifier "
     "stage's network))"),
    ({'quality': {'metrics': ['inception', 'bogus']}},
     "quality.metrics=['inception', 'bogus'] is not accepted; expected families that dataset=digits "
     "can serve: classifier ('inception' serves 3-channel image datasets (FID, KID and IS with "
     "quality.inception_weights))"),
    ({'quality': {'sweep': ['ddim:0']}},
     "quality.sweep entry 'ddim:0' is not accepted; expected 'sampler' or 'sampler:steps' with "
     "sampler one of ancestral, ddim and steps an integer >= 1 (steps >= timesteps: all of them), "
     "e.g. ddim:50"),
    ({'quality': {'sweep': ['euler']}},
     "quality.sweep entry 'euler' is not accepted; expected 'sampler' or 'sampler:steps' with sampler "
     "one of ancestral, ddim and steps an integer >= 1 (steps >= timesteps: all of them), e.g. ddim:50"),
    ({'quality': {'batch_size': 0}}, "quality.batch_size=0 is not accepted; expected an integer >= 1"),
    ({'quality': {'nearest_k': 0}}, "quality.nearest_k=0 is not accepted; expected an integer >= 1"),
    ({'quality': {'kid_subset_size': 1}},
     "quality.kid_subset_size=1 is not accepted; expected an integer in 2..sample.num_samples=256 "
     "(KID's subsets are drawn from the samples; draw more samples or use smaller subsets), or auto"),
    ({'quality': {'kid_subset_size': 300}},
     "quality.kid_subset_size=300 is not accepted; expected an integer in 2..sample.num_samples=256 "
     "(KID's subsets are drawn from the samples; draw more samples or use smaller subsets), or auto"),
    ({'quality': {'kid_subsets': 0}}, "quality.kid_subsets=0 is not accepted; expected an integer >= 1 or auto"),
    ({'sample': {'sampler': 'ald'}},
     "sample.sampler='ald' is not accepted; expected a sampler family=ddpm can run: ancestral, ddim, "
     "pc, ode (or auto)"),
    ({'family': 'sde', 'sample': {'sampler': 'ddim'}},
     "sample.sampler='ddim' is not accepted; expected a sampler family=sde can run: pc, ode (or auto)"),
    ({'family': 'ncsn', 'sample': {'sampler': 'pc'}},
     "sample.sampler='pc' is not accepted; expected a sampler family=ncsn can run: ald (or auto)"),
    ({'sample': {'predictor': 'euler_maruyama'}},
     "sample.predictor='euler_maruyama' is not accepted; expected auto unless sample.sampler=pc"),
    ({'sample': {'corrector': 'langevin'}},
     "sample.corrector='langevin' is not accepted; expected auto unless sample.sampler=pc"),
    ({'sample': {'snr': 0.1}}, "sample.snr=0.1 is not accepted; expected auto unless sample.sampler=pc"),
    ({'sample': {'sampler': 'pc', 'snr': 0.0}}, "sample.snr=0.0 is not accepted; expected a finite number > 0 or auto"),
    ({'sample': {'sampler': 'pc', 'snr': float("nan")}},
     "sample.snr=nan is not accepted; expected a finite number > 0 or auto"),
    ({'sample': {'sampler': 'pc', 'predictor': 'ancestral', 'steps': 10}},
     "sample.steps=10 is not accepted; expected 0 or timesteps=1000 with predictor=ancestral (it "
     "walks the diffusion's own T steps; euler_maruyama takes any number)"),
    ({'sample': {'sampler': 'pc', 'corrector_steps': 0}},
     "sample.corrector_steps=0 is not accepted; expected an integer >= 1"),
    ({'sde': {'type': 'vp'}},
     "sde.type='vp' is not accepted; expected auto with family=ddpm (the sde section belongs to "
     "family=sde)"),
    ({'sde': {'beta_min': -1.0}},
     "sde.beta_min=-1.0 is not accepted; expected auto with family=ddpm (the sde section belongs to "
     "family=sde)"),
    ({'family': 'sde', 'ncsn': {'sigma_min': 0.1}},
     "ncsn.sigma_min=0.1 is not accepted; expected auto with family=sde (the ncsn section belongs to "
     "family=ncsn)"),
    ({'family': 'ncsn', 'sde': {'num_scales': 1}},
     "sde.num_scales=1 is not accepted; expected auto with family=ncsn (the sde section belongs to "
     "family=sde)"),
    ({'ncsn': {'num_levels': 1}},
     "ncsn.num_levels=1 is not accepted; expected auto with family=ddpm (the ncsn section belongs to "
     "family=ncsn)"),
    ({'family': 'sde', 'sde': {'type': 've', 'beta_min': 0.1}},
     "sde.beta_min=0.1 is not accepted; expected auto with sde.type=ve (the key belongs to sde.type "
     "vp, subvp)"),
    ({'family': 'sde', 'sde': {'type': 've', 'beta_min': -1.0}},
     "sde.beta_min=-1.0 is not accepted; expected auto with sde.type=ve (the key belongs to sde.type "
     "vp, subvp)"),
    ({'family': 'sde', 'sde': {'sigma_min': 0.1}},
     "sde.sigma_min=0.1 is not accepted; expected auto with sde.type=vp (the key belongs to sde.type "
     "ve)"),
    ({'family': 'sde', 'sde': {'sigma_max': -1.0}},
     "sde.sigma_max=-1.0 is not accepted; expected auto with sde.type=vp (the key belongs to sde.type "
     "ve)"),
    ({'family': 'sde', 'sde': {'type': 've', 'sigma_min': 0.0}},
     "sde.sigma_min=0.0 is not accepted; expected a finite number > 0"),
    ({'family': 'sde', 'sde': {'type': 've', 'sigma_max': 0.01}},
     "sde.sigma_max=0.01 is not accepted; expected a finite number > sde.sigma_min=0.02, or auto"),
    ({'family': 'sde', 'sde': {'beta_min': 0.0}}, "sde.beta_min=0.0 is not accepted; expected a finite number > 0"),
    ({'family': 'sde', 'sde': {'beta_max': 0.05}},
     "sde.beta_max=0.05 is not accepted; expected a finite number > sde.beta_min=0.1"),
    ({'family': 'sde', 'sde': {'beta_max': float("inf")}},
     "sde.beta_max=inf is not accepted; expected a finite number > sde.beta_min=0.1"),
    ({'family': 'sde', 'sde': {'num_scales': 1}}, "sde.num_scales=1 is not accepted; expected an integer >= 2"),
    ({'family': 'sde', 'sde': {'num_scales': 10}},
     "sde.num_scales=10 is not accepted; expected an integer > sde.beta_max=20.0 (VP's discrete betas "
     "beta_max / N must be < 1)"),
    ({'family': 'sde', 'sde': {'eps': 0.0}},
     "sde.eps=0.0 is not accepted; expected a number in (0, 1): training draws t ~ U(eps, 1)"),
    (('yaml', 'family: sde\nsde: {eps: 1e+0}\n'),
     "sde.eps=1.0 is not accepted; expected a number in (0, 1): training draws t ~ U(eps, 1)"),
    ({'family': 'sde', 'sde': {'type': 'subvp'}, 'sample': {'predictor': 'ancestral'}},
     "sample.predictor='ancestral' is not accepted; expected euler_maruyama, reverse_diffusion or "
     "none with sde.type=subvp (sub-VP has no ancestral chain)"),
    ({'family': 'sde', 'sde': {'type': 'vp'}, 'sample': {'predictor': 'reverse_diffusion', 'steps': 10}},
     "sample.steps=10 is not accepted; expected 0 or an integer > sde.beta_max=20.0 with "
     "predictor=reverse_diffusion (it walks VP's discrete chain of that many steps, whose betas "
     "beta_max / steps must be < 1)"),
    ({'family': 'ncsn', 'ncsn': {'sigma_min': 0.0}},
     "ncsn.sigma_min=0.0 is not accepted; expected a finite number > 0"),
    ({'family': 'ncsn', 'ncsn': {'sigma_max': 0.01}},
     "ncsn.sigma_max=0.01 is not accepted; expected a finite number > ncsn.sigma_min=0.02, or auto"),
    ({'family': 'ncsn', 'ncsn': {'num_levels': 1}},
     "ncsn.num_levels=1 is not accepted; expected an integer >= 2 or auto"),
    ({'family': 'ncsn', 'ncsn': {'steps_per_level': 0}},
     "ncsn.steps_per_level=0 is not accepted; expected an integer >= 1 or auto"),
    ({'family': 'ncsn', 'ncsn': {'step_lr': 0.0}},
     "ncsn.step_lr=0.0 is not accepted; expected a finite number > 0 or auto"),
    ({'family': 'ncsn', 'ncsn': {'step_lr': float("inf")}},
     "ncsn.step_lr=inf is not accepted; expected a finite number > 0 or auto"),
    ({'ode': {'rtol': 0.0}},
     "ode.rtol=0.0 is not accepted; expected a finite number > 0 (the adaptive solver's tolerance)"),
    ({'ode': {'atol': float("inf")}},
     "ode.atol=inf is not accepted; expected a finite number > 0 (the adaptive solver's tolerance)"),
    ({'ode': {'eps': 1.0}},
     "ode.eps=1.0 is not accepted; expected a number in (0, 1): the likelihood integrates from t = "
     "eps to 1"),
    ({'ode': {'sample_eps': 0.0}}, "ode.sample_eps=0.0 is not accepted; expected a number in (0, 1) or auto"),
    ({'ode': {'num_images': -1}}, "ode.num_images=-1 is not accepted; expected an integer >= 0 (0: no ODE likelihood)"),
    ({'ode': {'repeats': 0}}, "ode.repeats=0 is not accepted; expected an integer >= 1"),
    ({'ode': {'divergence': 'approx'}},
     "ode.divergence='approx' is not accepted; expected one of auto, exact, hutchinson"),
    ({'quality': {'metrics': 'classifier'}},
     "quality.metrics='classifier' is not accepted; expected a list of strings or auto"),
    (('yaml', "timesteps: '1000'\n"), "timesteps='1000' is not accepted; expected an integer or auto"),
    (('yaml', 'beta_start: 1e-05\nbeta_end: 1e-05\nseed: -3\n'), "seed=-3 is not accepted; expected an integer >= 0"),
]


@pytest.mark.parametrize("raw, message", FROZEN_REFUSALS)
def test_every_refusal_message_is_frozen(raw, message):
    if isinstance(raw, tuple):  # ("yaml", text): as a params file spells it
        raw = yaml.load(raw[1], Loader=ParamsLoader)
    with pytest.raises(ConfigError) as err:
        Params.from_dict(raw)
    assert str(err.value) == message


def test_the_schema_names_every_beta_schedule_in_the_schedules_order():
    from ddpm.config import BETA_SCHEDULES
    from ddpm.schedules import SCHEDULES

    assert BETA_SCHEDULES == tuple(SCHEDULES)


def test_loading_params_imports_no_torch():
    """The prepare stage loads params; the schedules' names are declared without their torch module."""
    code = "import sys, ddpm.config; ddpm.config.Params.from_dict({}); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
