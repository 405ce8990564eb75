"""The feature classifier of the sample-quality metrics (ddpm/quality/classifier.py) and its DVC stage
(stages/classifier.py): shapes for every image dataset, determinism from the seed, accuracy
on the real digits, checkpoints that round-trip and refuse other files, and the stage's
outputs for labelled, unlabelled and missing data."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_stages import write_params

from ddpm.config import ClassifierConfig, Params
from ddpm.data import load_prepared, prepare_dataset, write_prepared
from ddpm.errors import CheckpointError
from ddpm.pipeline.checkpoint import save_checkpoint
from ddpm.quality.classifier import (
    Classifier,
    accuracy,
    classifier_features,
    labelled_splits,
    load_classifier,
    predict_labels,
    save_classifier,
    train_classifier,
)
from stages import classifier as classifier_stage

REPO = Path(__file__).resolve().parents[2]


def random_images(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def small_task(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 1x8x8 images with labels 0..2, enough to take a few optimizer steps."""
    labels = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed + 1))
    return random_images(n, (1, 8, 8), seed), labels


FEW_STEPS = ClassifierConfig(steps=5, batch_size=16, width=8, feature_dim=12)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])  # digits, (fashion) MNIST, CIFAR-10
def test_logits_and_features_have_the_documented_shapes(shape):
    model = Classifier(shape, num_classes=10, width=8, feature_dim=20)
    x = random_images(3, shape)
    assert model(x).shape == (3, 10)
    assert model.features(x).shape == (3, 20)
    # The features are the input of the last layer: the logits are an affine map of them.
    torch.testing.assert_close(model(x), model.out(model.features(x)))
    features = classifier_features(model, x, batch_size=2)
    assert features.dtype == torch.float64 and features.shape == (3, 20) and features.device.type == "cpu"
    features -= features.mean(dim=0)  # plain tensors: metrics may centre them in place
    assert predict_labels(model, x).dtype == torch.int64
    # GroupNorm, not BatchNorm: training mode computes the same function as eval mode.
    assert torch.equal(model.train().features(x), model.eval().features(x))


def test_training_is_deterministic_given_the_seed():
    images, labels = small_task()
    a = train_classifier(images, labels, 3, FEW_STEPS, seed=0, device="cpu")
    b = train_classifier(images, labels, 3, FEW_STEPS, seed=0, device="cpu")
    c = train_classifier(images, labels, 3, FEW_STEPS, seed=1, device="cpu")
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert torch.equal(classifier_features(a, images), classifier_features(b, images))
    assert not torch.equal(state_a["out.weight"], state_c["out.weight"])
    assert not torch.equal(classifier_features(a, images), classifier_features(c, images))
    assert not a.training and not any(p.requires_grad for p in a.parameters())


def test_training_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_classifier(*small_task(), 3, FEW_STEPS, seed=0, device="cpu")
    assert torch.equal(torch.rand(3), expected)


def test_progress_is_reported_for_every_step():
    calls = []
    train_classifier(*small_task(), 3, FEW_STEPS, seed=0, device="cpu", on_step=lambda d, t: calls.append((d, t)))
    assert calls == [(s, FEW_STEPS.steps) for s in range(1, FEW_STEPS.steps + 1)]


def test_labels_outside_the_classes_are_refused():
    images, labels = small_task()
    with pytest.raises(ValueError, match=r"labels must lie in 0..1, found 0..2"):
        train_classifier(images, labels, 2, FEW_STEPS, seed=0, device="cpu")


def digits_splits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    prepared = prepare_dataset("digits", "unused", seed=0, test_size=300)
    return labelled_splits(prepared, "digits in memory")


def test_default_digits_classifier_is_accurate():
    """The shipped digits config reaches the accuracy asked of the feature network (0.95).

    Why the bound is 0.95 and not what one run gives: it is the requirement, and the default
    config reaches about 0.99 on these 300 test images, whose binomial standard error there is
    sqrt(0.99 * 0.01 / 300) = 0.006; 0.95 lies more than six standard errors below, so the test
    fails for a classifier that misses the target, not for the luck of the split."""
    train_x, train_y, test_x, test_y, num_classes = digits_splits()
    config = Params(dataset="digits").resolved().classifier
    model = train_classifier(train_x, train_y, num_classes, config, seed=0, device="cpu")
    test_accuracy = accuracy(model, test_x, test_y)
    assert test_accuracy >= 0.95
    # accuracy() against a direct count of the argmax of the logits.
    with torch.no_grad():
        direct = sum(int(model(test_x[i:i + 1]).argmax()) == int(test_y[i]) for i in range(len(test_y)))
    assert test_accuracy == direct / len(test_y)


def test_save_and_load_round_trip(tmp_path):
    images, labels = small_task()
    model = train_classifier(images, labels, 3, FEW_STEPS, seed=0, device="cpu")
    info = {"dataset": "digits", "test_accuracy": 0.5, "config": dataclasses.asdict(FEW_STEPS)}
    save_classifier(tmp_path / "classifier.pt", model, info)
    loaded, loaded_info = load_classifier(tmp_path / "classifier.pt", "cpu")
    assert loaded_info == info
    assert not loaded.training
    assert torch.equal(classifier_features(loaded, images), classifier_features(model, images))


def test_a_checkpoint_without_classifier_loads_as_none(tmp_path):
    info = {"applicable": False, "reason": "no labels"}
    save_classifier(tmp_path / "classifier.pt", None, info)
    assert load_classifier(tmp_path / "classifier.pt") == (None, info)


def test_other_files_are_refused_naming_the_file(tmp_path):
    # The diffusion model's checkpoint: a valid checkpoint of another kind.
    path = save_checkpoint(tmp_path / "model.pt", {"params": {}, "ema": {"w": torch.zeros(2)}})
    with pytest.raises(CheckpointError, match=r"model\.pt'? is not a classifier checkpoint"):
        load_classifier(path)
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_classifier(tmp_path / "missing.pt")


# ------------------------------------------------------------------------------ the stage
def run_stage(tmp_path: Path, data: Path, **overrides) -> int:
    params = write_params(tmp_path / "params.yaml", **overrides)
    return classifier_stage.main(["--params", str(params), "--data", str(data),
                                  "--out", str(tmp_path / "models" / "classifier.pt"),
                                  "--metrics", str(tmp_path / "reports" / "classifier.json")])


def test_stage_trains_and_reports_on_digits(tmp_path):
    data = tmp_path / "prepared"
    write_prepared(data, prepare_dataset("digits", "unused", seed=0, test_size=100))
    assert run_stage(tmp_path, data, **{"classifier.steps": 3, "classifier.width": 8}) == 0
    report = json.loads((tmp_path / "reports" / "classifier.json").read_text())
    assert set(report) == {"test_accuracy", "train_accuracy", "num_test", "steps"}
    assert report["num_test"] == 100 and report["steps"] == 3
    model, info = load_classifier(tmp_path / "models" / "classifier.pt")
    assert model.width == 8 and info["num_classes"] == 10 and info["shape"] == [1, 8, 8]
    assert info["config"]["steps"] == 3 and info["seed"] == 0 and info["num_levels"] == 17
    # The report's accuracy is the saved network's accuracy on the prepared test split.
    _, _, test_x, test_y, _ = labelled_splits(load_prepared(data), data)
    assert math.isclose(accuracy(model, test_x, test_y), report["test_accuracy"])
    assert info["test_accuracy"] == report["test_accuracy"]
    assert info["train_accuracy"] == report["train_accuracy"]


def test_stage_says_not_applicable_for_the_swiss_roll(tmp_path):
    data = tmp_path / "prepared"
    write_prepared(data, prepare_dataset("swissroll", "unused", seed=0, test_size=20, num_train_vectors=50))
    assert run_stage(tmp_path, data, dataset="swissroll") == 0
    report = json.loads((tmp_path / "reports" / "classifier.json").read_text())
    assert report["applicable"] is False and "no class labels" in report["reason"]
    model, info = load_classifier(tmp_path / "models" / "classifier.pt")
    assert model is None and info["applicable"] is False and info["reason"] == report["reason"]


def test_stage_without_prepared_data_gives_one_line(tmp_path, capsys):
    assert run_stage(tmp_path, tmp_path / "nowhere") == 2
    error, hint = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("classifier: error: ") and "nowhere" in error
    assert hint.startswith("classifier: hint: ") and "dvc repro prepare" in hint
    assert not (tmp_path / "models").exists() and not (tmp_path / "reports").exists()


def test_stage_refuses_labelled_data_without_labels(tmp_path, capsys):
    # Digits prepared without its labels (as by a version before labels were kept).
    prepared = prepare_dataset("digits", "unused", seed=0, test_size=100)
    data = tmp_path / "prepared"
    write_prepared(data, dataclasses.replace(prepared, train_labels=None, test_labels=None,
                                             meta={**prepared.meta, "num_classes": None}))
    assert run_stage(tmp_path, data) == 2
    error, hint = capsys.readouterr().err.strip().splitlines()
    assert "hold no class labels" in error and "'digits'" in error and str(data) in error
    assert "dvc repro prepare" in hint
    assert not (tmp_path / "models").exists() and not (tmp_path / "reports").exists()


def test_stage_does_not_load_mlflow():
    # The quality stage reports the accuracy to the experiment's run; this stage has none.
    code = "import sys, stages.classifier; sys.exit('mlflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0

