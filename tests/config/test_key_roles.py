"""Every params key has a role (ddpm.config.KEY_ROLES), and that role decides whether a saved
training state is resumed, whether a checkpoint fits the current params, and what the train
stage depends on: a model is never trained by another model's state.

The resume tests train for real: a finished state (step == train.steps, as the train stage
leaves it in checkpoints/) is saved with one config, and a run with one training key changed
must start at step 0 instead of returning the old weights under the new params.
"""

from __future__ import annotations

import dataclasses
import shutil
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np
import pytest
import torch
import yaml

from ddpm.config import (
    BY_DATA,
    BY_MACHINE,
    BY_SAMPLE,
    DOWNSTREAM,
    KEY_ROLES,
    NETWORK,
    RUNTIME,
    TRAINING,
    Params,
    changes_training,
    resolved_by,
)
from ddpm.pipeline.checkpoint import config_differences
from ddpm.training import state as train_state
from ddpm.training.loop import train
from ddpm.training.state import training_fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def schema_keys() -> dict[str, Any]:
    """Every dotted key of the params schema with its type hint."""
    keys = {}
    for f in dataclasses.fields(Params):
        hint = typing.get_type_hints(Params)[f.name]
        if dataclasses.is_dataclass(hint):
            prefix = "" if f.name == "diffusion" else f"{f.name}."
            keys.update({prefix + g.name: h for g, h in zip(dataclasses.fields(hint),
                                                            typing.get_type_hints(hint).values(), strict=True)})
        else:
            keys[f.name] = hint
    return keys


def admits_auto(hint: Any, default: Any) -> bool:
    if hint is str:  # a free string (dataset, beta_schedule, train.device): auto when that is its default
        return default == "auto"
    if get_origin(hint) is Literal:
        return "auto" in get_args(hint)
    if get_origin(hint) in (typing.Union, types.UnionType):
        return any(admits_auto(a, default) for a in get_args(hint))
    return False


# ---------------------------------------------------------------------- the table
def test_every_key_of_the_params_schema_has_a_role_and_the_table_names_no_other():
    keys = set(schema_keys())
    assert keys == set(Params().flatten())  # the walk sees what params.yaml holds
    missing, stale = sorted(keys - set(KEY_ROLES)), sorted(set(KEY_ROLES) - keys)
    assert not missing, f"keys without a role in ddpm.config.KEY_ROLES: {missing}"
    assert not stale, f"KEY_ROLES names keys the schema does not have: {stale}"
    assert {r.role for r in KEY_ROLES.values()} <= {NETWORK, TRAINING, RUNTIME, DOWNSTREAM}


def test_a_key_names_who_resolves_its_auto_exactly_when_it_takes_auto():
    hints, defaults = schema_keys(), Params().flatten()
    for key, role in KEY_ROLES.items():
        assert (role.auto is not None) == admits_auto(hints[key], defaults[key]), (key, role.auto, hints[key])


def test_the_resolved_key_lists_read_the_table():
    from ddpm.config import BY_PREPARE, PREPARE_RESOLVED, RUNTIME_RESOLVED, SAMPLE_RESOLVED, TRAIN_RESOLVED
    assert set(RUNTIME_RESOLVED) == {"train.precision", "train.device", "train.channels_last"}
    assert set(TRAIN_RESOLVED) == {"sde.sigma_max", "ncsn.sigma_max", "ncsn.num_levels", "train.batch_size"}
    assert set(SAMPLE_RESOLVED) == {"ncsn.steps_per_level", "ncsn.step_lr"}
    assert PREPARE_RESOLVED == ("data.test_size",)
    assert (RUNTIME_RESOLVED, TRAIN_RESOLVED, SAMPLE_RESOLVED, PREPARE_RESOLVED) == tuple(
        map(resolved_by, (BY_MACHINE, BY_DATA, BY_SAMPLE, BY_PREPARE)))


def test_the_training_fingerprint_holds_exactly_the_network_and_training_keys():
    fingerprint = training_fingerprint(Params.from_dict({}))
    expected = {k for k, r in KEY_ROLES.items() if r.role in (NETWORK, TRAINING)}
    assert set(fingerprint) == expected
    # The keys the issue found missing are in it.
    assert {"family", "recipe", "sde.type", "sde.weighting", "ncsn.sigma_min", "ncsn.num_levels"} <= expected


def test_a_key_the_table_does_not_name_counts_as_training(monkeypatch):
    assert changes_training("a.key.nobody.classified")
    roles = dict(KEY_ROLES)
    del roles["sample.steps"]  # a downstream key, as if it had been forgotten
    monkeypatch.setattr("ddpm.config.roles.KEY_ROLES", roles)
    assert "sample.steps" in training_fingerprint(Params.from_dict({}))


def test_a_checkpoint_is_refused_for_every_network_key_and_only_for_those():
    flat = Params.from_dict({}).flatten()
    for key, role in KEY_ROLES.items():
        changed = {**flat, key: "something else"}
        diffs = config_differences(flat, changed)
        if role.role == NETWORK:
            assert [d.split(":")[0] for d in diffs] == [key], key
        elif role.role != NETWORK:
            assert diffs == [], key


def test_the_train_stage_depends_on_every_key_that_changes_training():
    """DVC reruns train when one of these changes (data.* through the prepare stage's output)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = set(stages["train"]["params"]) | set(stages["prepare"]["params"])

    def covered(key: str) -> bool:
        return key in declared or key.split(".")[0] in declared

    assert [k for k in KEY_ROLES if changes_training(k) and not covered(k)] == []


# ---------------------------------------------------------------------- resume across keys
# Tiny digits-shaped images and a tiny U-Net: every key explicit, so that a case changes one key.
META = {"dataset": "digits", "kind": "image", "shape": [1, 8, 8], "num_levels": 17}
MODEL = {"name": "unet", "base_channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attn_resolutions": [],
         "dropout": 0.0, "num_heads": 1, "mlp_hidden": 16, "mlp_layers": 2, "time_embedding": "sinusoidal"}
TRAIN = {"steps": 1, "batch_size": 4, "lr": 1e-3, "lr_schedule": "constant", "warmup_steps": 1, "grad_clip": 1.0,
         "ema_decay": 0.9, "loss_norm": "l2", "hybrid_lambda": 0.001, "hflip": False, "precision": "fp32", "tf32": True,
         "channels_last": False, "log_every": 1, "checkpoint_every": 1, "bound_every": 0}
DATA = {"test_size": 300, "swissroll_train_size": 1000, "swissroll_noise": 0.5, "folder": "data/images",
        "image_size": 32}
DIFFUSION = {"beta_schedule": "linear", "timesteps": 20, "beta_start": 1e-4, "beta_end": 0.02}
DDPM_TYPES = {"mean_type": "eps", "var_type": "fixed_small", "loss_type": "simple"}
SCORE_TYPES = {"mean_type": "auto", "var_type": "auto", "loss_type": "auto"}
SDE_AUTO = {f"sde.{k}": "auto" for k in ("type", "beta_min", "beta_max", "sigma_min", "sigma_max", "num_scales",
                                         "weighting", "eps")}
NCSN_AUTO = {"ncsn.sigma_max": "auto", "ncsn.sigma_min": "auto", "ncsn.num_levels": "auto"}
NCSN = {"ncsn.sigma_max": 5.0, "ncsn.sigma_min": 0.02, "ncsn.num_levels": 4}
VP = {"sde.type": "vp", "sde.beta_min": 0.1, "sde.beta_max": 20.0, "sde.num_scales": 50, "sde.weighting": "sigma2",
      "sde.eps": 1e-5}
VE = {**VP, "sde.type": "ve", "sde.beta_min": "auto", "sde.beta_max": "auto", "sde.sigma_min": 0.02,
      "sde.sigma_max": 5.0}

BASES: dict[str, dict[str, Any]] = {
    "ddpm": {"family": "ddpm", **DDPM_TYPES},
    "sde": {"family": "sde", **SCORE_TYPES, **VP},
    "sde_ve": {"family": "sde", **SCORE_TYPES, **VE},
    "ncsn": {"family": "ncsn", **SCORE_TYPES, **NCSN},
}
# (base, key, overrides): the key changed to another valid value; a change that the
# validation allows only with other keys (a family's own sections) carries them along. The
# keys every family's training reads the same way (data, network, optimizer) are changed on
# the ddpm base; each family's own keys on that family.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("ddpm", "recipe", {"recipe": "vlb"}),
    ("ddpm", "dataset", {"dataset": "mnist"}),
    ("ddpm", "seed", {"seed": 1}),
    ("ddpm", "family", {"family": "sde", **SCORE_TYPES, **VP}),
    ("ddpm", "beta_schedule", {"beta_schedule": "cosine"}),
    ("ddpm", "timesteps", {"timesteps": 30}),
    ("ddpm", "beta_start", {"beta_start": 2e-4}),
    ("ddpm", "beta_end", {"beta_end": 0.03}),
    ("ddpm", "mean_type", {"mean_type": "x0"}),
    ("ddpm", "var_type", {"var_type": "fixed_large"}),
    ("ddpm", "loss_type", {"loss_type": "vlb"}),
    ("ddpm", "data.test_size", {"data.test_size": 100}),
    ("ddpm", "data.swissroll_train_size", {"data.swissroll_train_size": 500}),
    ("ddpm", "data.swissroll_noise", {"data.swissroll_noise": 0.3}),
    ("ddpm", "data.folder", {"data.folder": "data/other_images"}),
    ("ddpm", "data.image_size", {"data.image_size": 16}),
    ("ddpm", "model.name", {"model.name": "shufflenet_unet", "model.base_channels": 16}),
    ("ddpm", "model.base_channels", {"model.base_channels": 16}),
    ("ddpm", "model.channel_mult", {"model.channel_mult": [1, 1]}),
    ("ddpm", "model.num_res_blocks", {"model.num_res_blocks": 2}),
    ("ddpm", "model.attn_resolutions", {"model.attn_resolutions": [8]}),
    ("ddpm", "model.dropout", {"model.dropout": 0.1}),
    ("ddpm", "model.num_heads", {"model.num_heads": 2}),
    ("ddpm", "model.mlp_hidden", {"model.mlp_hidden": 32}),
    ("ddpm", "model.mlp_layers", {"model.mlp_layers": 3}),
    ("ddpm", "model.time_embedding", {"model.time_embedding": "learned"}),
    ("ddpm", "train.batch_size", {"train.batch_size": 8}),
    ("ddpm", "train.lr", {"train.lr": 2e-3}),
    ("ddpm", "train.lr_schedule", {"train.lr_schedule": "cosine"}),
    ("ddpm", "train.warmup_steps", {"train.warmup_steps": 2}),
    ("ddpm", "train.grad_clip", {"train.grad_clip": 0.5}),
    ("ddpm", "train.ema_decay", {"train.ema_decay": 0.99}),
    ("ddpm", "train.loss_norm", {"train.loss_norm": "l1"}),
    ("ddpm", "train.hybrid_lambda", {"train.hybrid_lambda": 0.01}),
    ("ddpm", "train.hflip", {"train.hflip": True}),
    ("ddpm", "train.precision", {"train.precision": "bf16"}),
    ("ddpm", "train.tf32", {"train.tf32": False}),
    ("ddpm", "train.channels_last", {"train.channels_last": True}),
    ("sde", "family", {"family": "ncsn", **SDE_AUTO, **NCSN}),
    ("sde", "sde.type", {"sde.type": "subvp"}),
    ("sde", "sde.beta_min", {"sde.beta_min": 0.2}),
    ("sde", "sde.beta_max", {"sde.beta_max": 15.0}),
    ("sde", "sde.num_scales", {"sde.num_scales": 60}),
    ("sde", "sde.weighting", {"sde.weighting": "g2"}),
    ("sde", "sde.eps", {"sde.eps": 1e-3}),
    ("sde_ve", "sde.sigma_min", {"sde.sigma_min": 0.05}),
    ("sde_ve", "sde.sigma_max", {"sde.sigma_max": 6.0}),
    ("ncsn", "family", {"family": "sde", **NCSN_AUTO, **VP}),
    ("ncsn", "ncsn.sigma_max", {"ncsn.sigma_max": 6.0}),
    ("ncsn", "ncsn.sigma_min", {"ncsn.sigma_min": 0.05}),
    ("ncsn", "ncsn.num_levels", {"ncsn.num_levels": 5}),
]


def tiny_params(flat: dict[str, Any]) -> Params:
    """Params from the tiny defaults with ``flat`` (dotted keys) applied."""
    raw: dict[str, Any] = {**DIFFUSION, "model": dict(MODEL), "train": dict(TRAIN), "data": dict(DATA)}
    for key, value in flat.items():
        section, _, name = key.rpartition(".")
        if section:
            raw.setdefault(section, {})[name] = value
        else:
            raw[key] = value
    return Params.from_dict(raw)


def levels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 17, size=(16, 1, 8, 8), dtype=np.uint8)


@pytest.fixture(scope="module")
def finished_states(tmp_path_factory) -> dict[str, Path]:
    """Each base config trained to its end, its state saved as the train stage leaves it."""
    root = tmp_path_factory.mktemp("finished")
    states = {}
    for name, flat in BASES.items():
        states[name] = root / f"{name}.pt"
        result = train(tiny_params(flat), levels(), META, CPU, state_path=states[name], progress=False)
        assert (result.start_step, result.step) == (0, 1)
    return states


def test_every_training_key_of_every_family_has_a_resume_case():
    assert {key for _, key, _ in CASES} == {k for k in KEY_ROLES if changes_training(k)}


@pytest.mark.parametrize(("base", "key", "change"), CASES, ids=[f"{b}-{k}" for b, k, _ in CASES])
def test_resume_and_family_a_changed_training_key_trains_from_step_0(base, key, change, finished_states, tmp_path,
                                                                     capsys):
    state = tmp_path / "state.pt"
    shutil.copy(finished_states[base], state)
    changed = train(tiny_params({**BASES[base], **change}), levels(), META, CPU, state_path=state, progress=False)
    assert changed.start_step == 0, f"{key} changed, yet the finished state of the old config was resumed"
    assert "training starts at step 0" in capsys.readouterr().err


@pytest.mark.parametrize("base", list(BASES))
def test_resume_and_family_the_same_config_continues_its_finished_state(base, finished_states, tmp_path):
    """The control of the test above: the unchanged config does resume (so step 0 there is the key's doing)."""
    state = tmp_path / "state.pt"
    shutil.copy(finished_states[base], state)
    assert train(tiny_params(BASES[base]), levels(), META, CPU, state_path=state, progress=False).start_step == 1


def test_resume_and_family_a_chain_of_models_sharing_one_state_path_each_trains_its_own(tmp_path):
    """The issue's reproduction: one workspace, checkpoints/ kept between experiments that change
    only sde.weighting, then sde.type, then the family; each must train its own weights."""
    state, previous = tmp_path / "state.pt", None
    chain = [BASES["sde"], {**BASES["sde"], "sde.weighting": "g2"}, {**BASES["sde_ve"], "sde.weighting": "g2"},
             BASES["ncsn"]]
    for flat in chain:
        result = train(tiny_params(flat), levels(), META, CPU, state_path=state, progress=False)
        assert result.start_step == 0
        if previous is not None and previous.keys() == result.ema.state_dict().keys():
            assert any(not torch.equal(previous[k], v) for k, v in result.ema.state_dict().items())
        previous = {k: v.clone() for k, v in result.ema.state_dict().items()}


def test_resume_and_family_under_a_decaying_lr_a_longer_run_trains_anew(tmp_path):
    """train.steps is runtime (a longer run continues a shorter one) only while the learning rate
    is constant: a cosine schedule ends at 0 at train.steps, so a run to 3 steps and a run to 1 step
    differ from their first step on, and the finished 1-step state must not be continued."""
    for schedule, continued in (("constant", True), ("cosine", False)):
        state = tmp_path / f"{schedule}.pt"
        short = tiny_params({"train.lr_schedule": schedule})
        train(short, levels(), META, CPU, state_path=state, progress=False)
        longer = dataclasses.replace(short, train=dataclasses.replace(short.train, steps=3))
        assert train(longer, levels(), META, CPU, state_path=state, progress=False).start_step == (
            1 if continued else 0), schedule
        assert ("train.steps" in training_fingerprint(short)) is not continued


def test_resume_refused_after_the_train_stage_changes(tmp_path):
    """The code digest covers the stage that drives training, not only the package."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "ddpm", copy / "ddpm", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "stages").mkdir()
    shutil.copy(REPO / "stages" / "train.py", copy / "stages" / "train.py")
    digest = train_state.code_fingerprint.__wrapped__  # uncached: the copy is edited in place
    assert digest(copy) == train_state.code_fingerprint()
    before = digest(copy)
    (copy / "stages" / "sample.py").write_text("# another stage is not training code\n")
    assert digest(copy) == before
    stage = copy / "stages" / "train.py"
    stage.write_text(stage.read_text() + "\n# an edit\n")
    assert digest(copy) != before
