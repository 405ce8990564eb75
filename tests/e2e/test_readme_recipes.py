"""Every command in README's recipe table runs through real DVC (with tiny overrides
appended), so no row can rot; and the table has one row per recipe."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data import write_mnist_like
from test_pipeline_e2e import dvc, make_workspace, mlflow_runs

from ddpm.config import RECIPES, Params

README = Path(__file__).resolve().parents[2] / "README.md"
# Few steps and few images, the same keys for every row (a key one row sets would otherwise stay
# in the workspace's params.yaml for the next row). The recipes' own keys stay untouched, except
# timesteps (a 1000-step bound or sampling loop is what makes a run slow), data.image_size (the
# folder recipe's U-Net takes about a minute per step at 128 x 128 on 2 cores) and
# model.base_channels: at the folder recipe's 64 its U-Net has 57M parameters even at 16 x 16, and
# writing its checkpoint, training state (model, EMA, Adam's moments), DVC cache copy and MLflow
# artifact, about 2 GB in all, made that row's train and evaluate stages take 19 s and 12 s with
# two test workers busy; at 16 it has 3.6M. The ODE likelihood runs on 2 images at a loose
# tolerance: at 1e-5 the folder row's evaluate stage took 105 s (a forward and backward pass of that
# U-Net per evaluation), at 1e-2 24 s.
TINY = ["timesteps=4", "data.image_size=16", "model.base_channels=16", "train.steps=2", "train.batch_size=4",
        "train.warmup_steps=0", "train.log_every=1", "train.bound_every=0", "train.checkpoint_every=2",
        "sample.num_samples=8", "sample.trajectory_frames=2", "evaluate.num_images=4", "ode.num_images=2",
        "ode.rtol=0.01", "ode.atol=0.01", "classifier.steps=2", "quality.sweep=[]", "quality.kid_subset_size=4"]
# data.test_size per dataset: the tiny MNIST files' whole test split, two of the six folder images.
TEST_SIZE = {"digits": 300, "swissroll": 300, "mnist": 0, "folder": 2}


def table_commands() -> list[str]:
    """The commands in the Recipes table of README.md, as a user would copy them."""
    section = README.read_text().split("### Recipes", 1)[1].split("\n#", 1)[0]
    return [m.group(1) for line in section.splitlines() if line.startswith("|")
            for m in [re.search(r"`(dvc exp run [^`]*)`", line)] if m]


def recipe_of(command: str) -> str:
    return re.search(r"-S recipe=(\w+)", command).group(1)


def test_the_table_has_one_row_per_recipe():
    assert sorted(recipe_of(c) for c in table_commands()) == sorted(RECIPES)


def write_image_folder(folder: Path) -> None:
    """Six RGB PNGs of odd sizes (the folder recipe resizes and crops them to 128 x 128)."""
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = rng.integers(0, 256, size=(130 + 3 * i, 141, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"image_{i}.png")


def run_rows(root: Path, env: dict, commands: list[str]) -> None:
    """Run each README command with the tiny overrides appended, in order, in one workspace; check
    what DVC reran, the metrics, the MLflow run of each; last, that `dvc exp show` lists them all."""
    names, previous = [], None
    for command in commands:
        name = recipe_of(command)
        resolved = Params.from_dict({"recipe": name})
        dataset, data = resolved.dataset, (resolved.dataset, resolved.data)
        tiny = [*TINY, f"data.test_size={TEST_SIZE[dataset]}"]
        args = shlex.split(command)[3:] + [arg for kv in tiny for arg in ("-S", kv)]
        out = dvc(["exp", "run", *args], root, env).stdout
        # DVC reruns what the recipe changed: the model always; prepare reads the recipe (it may
        # change the dataset), but when the data keys stay the same its output does too, and the
        # classifier trained on it is reused.
        assert "Running stage 'train'" in out, out
        if data == previous:
            assert "Running stage 'classifier'" not in out, out
        previous = data

        metrics = json.loads((root / "reports" / "metrics.json").read_text())
        assert metrics["timesteps"] == 4 and metrics["num_images"] == (4 if dataset != "folder" else 2)
        assert math.isfinite(metrics[metrics["metric"]]["total"]), (name, metrics)
        assert metrics["unit"] == ("nats/dim" if dataset == "swissroll" else "bits/dim")
        # One MLflow run per experiment, holding the recipe's settings resolved (what trained the model).
        runs = mlflow_runs(root)[1]
        assert len(runs) == len(names) + 1
        names.append(runs[-1].data.tags["dvc_experiment"])
        run_params = runs[-1].data.params
        assert run_params["recipe"] == name and run_params["dataset"] == dataset
        overridden = {kv.split("=")[0] for kv in tiny}
        for key, value in RECIPES[name].settings.items():
            if key not in overridden:
                expected = list(value) if isinstance(value, tuple) else value
                assert run_params[key] == str(expected), (name, key, run_params[key])

    # `dvc exp show` lists every experiment with its recipe and its bound, as a user compares them.
    show = json.loads(dvc(["exp", "show", "--json"], root, env).stdout)
    revs = {e["name"]: e["revs"][0]["data"] for b in show for e in (b.get("experiments") or []) if e.get("name")}
    for exp_name, command in zip(names, commands, strict=True):
        data = revs[exp_name]
        assert data["params"]["params.yaml"]["data"]["recipe"] == recipe_of(command)
        metrics = data["metrics"]["reports/metrics.json"]["data"]
        assert math.isfinite(metrics[metrics["metric"]]["total"])


def on_digits(command: str) -> bool:
    return Params.from_dict({"recipe": recipe_of(command)}).dataset == "digits"


# Two classes, so that `pytest -n 2 --dist loadscope` (README) can run the two halves of the
# table on the two workers, each in its own workspace.
@pytest.mark.slow
class TestDigitsRecipes:
    def test_every_digits_recipe_command_runs_through_dvc(self, tmp_path):
        commands = [c for c in table_commands() if on_digits(c)]
        assert len(commands) >= 2  # so the classifier's reuse is checked
        run_rows(*make_workspace(tmp_path / "repo", overrides={}), commands)


@pytest.mark.slow
class TestOtherRecipes:
    def test_every_other_recipe_command_runs_through_dvc(self, tmp_path):
        root, env = make_workspace(tmp_path / "repo", overrides={})
        write_mnist_like(root / "data" / "raw", "MNIST", n_train=40, n_test=10)
        write_image_folder(root / "data" / "images")
        run_rows(root, env, [c for c in table_commands() if not on_digits(c)])
