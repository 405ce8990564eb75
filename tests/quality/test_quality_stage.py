"""The classifier, quality and report stages in-process, the way DVC calls them, on a tiny
trained digits model and on the Swiss roll: what they write, that the sweep's samples share
the sample stage's seeds, and one clear line for each bad input with nothing written."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_stages import error_and_hint, write_params

from ddpm.data import Prepared, write_prepared
from stages import classifier, prepare, quality, report, sample, train

TINY = {"timesteps": 20, "model.base_channels": 16, "train.steps": 3, "train.batch_size": 32,
        "train.bound_every": 0, "classifier.steps": 20, "sample.num_samples": 24, "sample.trajectory_frames": 2,
        "quality.kid_subset_size": 6, "quality.sweep": ["ddim:5", "ddim:40", "ancestral"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny digits pipeline up to the sample stage: prepare, train, classifier, sample."""
    root = tmp_path_factory.mktemp("quality")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        run_until_samples(root, write_params(root / "params.yaml", **TINY))
    return root


def run_until_samples(root, params) -> None:
    """prepare, train, classifier and sample into ``root`` (prep/, models/, classifier.json,
    samples/), as DVC runs them."""
    p = ["--params", str(params)]
    assert prepare.main([*p, "--raw", str(root / "raw"), "--out", str(root / "prep")]) == 0
    assert train.main([*p, "--data", str(root / "prep"), "--out", str(root / "models"),
                       "--state", str(root / "ckpt" / "state.pt"), "--reports", str(root / "rep")]) == 0
    assert classifier.main([*p, "--data", str(root / "prep"), "--out", str(root / "models" / "classifier.pt"),
                            "--metrics", str(root / "classifier.json")]) == 0
    assert sample.main([*p, "--model", str(root / "models" / "model.pt"), "--out", str(root / "samples")]) == 0


def quality_args(root, params, out) -> list[str]:
    return ["--params", str(params), "--model", str(root / "models" / "model.pt"),
            "--classifier", str(root / "models" / "classifier.pt"), "--data", str(root / "prep"),
            "--samples", str(root / "samples" / "samples.npz"), "--out", str(out)]


def test_quality_scores_the_samples_and_the_sweep_beside_their_floors(trained, tmp_path, monkeypatch, capsys):
    root = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    params = write_params(tmp_path / "params.yaml", **TINY)
    assert quality.main(quality_args(root, params, tmp_path / "q")) == 0
    out = json.loads((tmp_path / "q" / "quality.json").read_text())
    accuracy = json.loads((root / "classifier.json").read_text())["test_accuracy"]
    assert out["classifier_test_accuracy"] == accuracy and out["families"] == ["classifier"]
    # 24 samples against 24 real: the digits' 1497 training images hold the reference and 4 floor draws.
    assert out["num_samples"] == 24 and out["floor_draws"] == 4
    headline = out["samples"]
    assert headline["sampler"] == "ancestral" and headline["nfe"] == 20
    for key in ("fd_classifier", "kid_classifier", "precision_classifier", "recall_classifier",
                "density_classifier", "coverage_classifier", "label_tv_classifier"):
        assert np.isfinite(headline[key]) and np.isfinite(headline[f"{key}_floor"]), key
        assert f"{key}_floor_std" in headline
    assert 0 <= headline["precision_classifier"] <= 1 and 0 <= headline["coverage_classifier"] <= 1
    # ddim:40 is all 20 steps (ddim_20); "ancestral" is the sample stage's own setting, scored once.
    assert list(out["sweep"]) == ["ddim_5", "ddim_20"]
    rows = (tmp_path / "q" / "nfe.csv").read_text().splitlines()
    assert rows[0].startswith("setting,sampler,nfe,fd_classifier,")
    # Sorted by NFE; a tie keeps the scoring order (the sample stage's samples first).
    assert [r.split(",")[0] for r in rows[1:]] == ["ddim_5", "ancestral_20", "ddim_20"]
    assert "fd_classifier" in capsys.readouterr().out


def test_the_sweep_draws_with_the_sample_stages_seeds(trained, tmp_path, monkeypatch):
    """A sweep setting equal to the sample stage's (ancestral, all steps) scores the same
    numbers as the sample stage's own samples: sample i comes from item i of the stream."""
    root = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    params = write_params(tmp_path / "params.yaml", **{**TINY, "sample.sampler": "ddim", "sample.steps": 5,
                                                       "quality.sweep": ["ancestral"]})
    # The stored samples are the fixture's ancestral ones (labelled ddim_5 here, as params say), so
    # the sweep's "ancestral" is drawn afresh by this stage, and must reproduce them exactly.
    assert quality.main(quality_args(root, params, tmp_path / "q")) == 0
    out = json.loads((tmp_path / "q" / "quality.json").read_text())
    stored = {k: v for k, v in out["samples"].items() if k in out["sweep"]["ancestral_20"] and k != "nfe"}
    assert stored and all(out["sweep"]["ancestral_20"][k] == pytest.approx(v, rel=1e-9) for k, v in stored.items())


def test_report_merges_the_bound_and_the_quality_into_one_metrics_file(tmp_path):
    (tmp_path / "bound.json").write_text(json.dumps({"metric": "bpd", "bpd": {"total": 2.9}}))
    (tmp_path / "quality.json").write_text(json.dumps({"samples": {"fd_classifier": 1.0}}))
    args = ["--bound", str(tmp_path / "bound.json"), "--quality", str(tmp_path / "quality.json"),
            "--out", str(tmp_path / "metrics.json")]
    assert report.main(args) == 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        "metric": "bpd", "bpd": {"total": 2.9}, "quality": {"samples": {"fd_classifier": 1.0}}}


def test_a_single_kid_subset_has_a_nan_standard_error_in_every_report(trained, tmp_path, monkeypatch):
    """kid_subset_size = sample.num_samples (KID over all the samples) leaves one subset: one
    estimate, whose standard error is unknown. It is NaN (never 0, which would claim an exact
    value) in quality.json, in metrics.json (where DVC shows nan) and in MLflow."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = write_params(tmp_path / "params.yaml", **{**TINY, "quality.kid_subset_size": 24, "quality.sweep": []})
    assert quality.main(quality_args(trained, params, tmp_path / "q")) == 0
    headline = json.loads((tmp_path / "q" / "quality.json").read_text())["samples"]
    assert math.isfinite(headline["kid_classifier"]) and math.isnan(headline["kid_classifier_stderr"])
    (tmp_path / "bound.json").write_text(json.dumps({"metric": "bpd", "bpd": {"total": 2.9}}))
    assert report.main(["--bound", str(tmp_path / "bound.json"), "--quality", str(tmp_path / "q" / "quality.json"),
                        "--out", str(tmp_path / "metrics.json")]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isnan(metrics["quality"]["samples"]["kid_classifier_stderr"])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert math.isfinite(run.data.metrics["kid_classifier"]) and math.isnan(run.data.metrics["kid_classifier_stderr"])


def test_report_refuses_a_missing_part_with_one_line(tmp_path, capsys):
    (tmp_path / "bound.json").write_text("{}")
    args = ["--bound", str(tmp_path / "bound.json"), "--quality", str(tmp_path / "none.json"),
            "--out", str(tmp_path / "metrics.json")]
    assert report.main(args) == 2
    error, hint = error_and_hint("report", capsys.readouterr().err)
    assert "none.json not found" in error and "dvc repro" in hint
    assert not (tmp_path / "metrics.json").exists()


def test_too_few_real_examples_for_the_floors_is_one_line_and_nothing_written(trained, tmp_path, monkeypatch,
                                                                             capsys):
    root = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = write_params(tmp_path / "params.yaml", **TINY)
    many = tmp_path / "many.npz"
    np.savez(many, samples=np.zeros((800, 1, 8, 8), dtype=np.float32), nfe=np.full(800, 1000.0))
    args = quality_args(root, params, tmp_path / "q")
    args[args.index("--samples") + 1] = str(many)
    assert quality.main(args) == 2
    error, hint = error_and_hint("quality", capsys.readouterr().err)
    assert "2 x 800 = 1600 real training examples" in error and "holds 1497" in error
    assert "sample.num_samples" in hint
    assert not (tmp_path / "q").exists() and not (tmp_path / "mlflow.db").exists()  # before the store is touched


def test_kid_subsets_larger_than_the_samples_are_refused_when_params_load(tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", **{"sample.num_samples": 40, "quality.kid_subset_size": 50})
    assert quality.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "quality.kid_subset_size=50 is not accepted" in err and "sample.num_samples=40" in err


def write_rgb_prepared(path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 3, 32, 32), dtype=np.uint8)
    meta = {"dataset": "cifar10", "kind": "image", "shape": [3, 32, 32], "num_levels": 256, "num_classes": 10,
            "train_size": 8, "test_size": 2, "source": "test", "seed": 0}
    labels = np.arange(10, dtype=np.int64)
    write_prepared(path, Prepared(images[:8], images[8:], meta, labels[:8], labels[8:]))


def test_a_missing_inception_weights_file_stops_the_stage_before_any_work(tmp_path, capsys):
    write_rgb_prepared(tmp_path / "prep")
    weights = tmp_path / "nowhere" / "inception.pth"
    params = write_params(tmp_path / "params.yaml", dataset="cifar10", **{"quality.inception_weights": str(weights)})
    args = ["--params", str(params), "--model", str(tmp_path / "none.pt"), "--data", str(tmp_path / "prep"),
            "--out", str(tmp_path / "q")]
    assert quality.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quality: error: quality.inception_weights=") and str(weights) in err[0]
    assert not (tmp_path / "q").exists()


def test_without_inception_weights_inception_is_skipped_with_one_line_saying_how(tmp_path, capsys):
    write_rgb_prepared(tmp_path / "prep")
    params = write_params(tmp_path / "params.yaml", dataset="cifar10")
    args = ["--params", str(params), "--model", str(tmp_path / "none.pt"), "--data", str(tmp_path / "prep"),
            "--samples", str(tmp_path / "samples.npz"), "--out", str(tmp_path / "q")]
    assert quality.main(args) == 2  # then stops at the missing samples, after saying what it skipped
    err = capsys.readouterr().err
    assert "Inception FID/KID/IS skipped: set quality.inception_weights" in err
    assert "samples.npz not found" in err.splitlines()[-2]


def test_swiss_roll_is_scored_on_the_points(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = write_params(tmp_path / "params.yaml", dataset="swissroll", timesteps=20,
                          **{"train.steps": 3, "train.bound_every": 0, "sample.num_samples": 30,
                             "sample.trajectory_frames": 2, "quality.kid_subset_size": 6,
                             "quality.sweep": ["ddim:5"], "data.swissroll_train_size": 200, "train.batch_size": 50})
    run_until_samples(tmp_path, params)
    assert json.loads((tmp_path / "classifier.json").read_text())["applicable"] is False
    assert quality.main(quality_args(tmp_path, params, tmp_path / "q")) == 0
    out = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert out["families"] == ["raw"] and out["floor_draws"] == 4  # 200 points: reference + 4 draws of 30
    samples = out["samples"]
    for key in ("energy_distance", "sliced_wasserstein"):
        assert samples[f"{key}_stderr"] > 0 and np.isfinite(samples[f"{key}_floor"])
    # A 3-step model is far from the data: its energy distance lies well above the floor's spread.
    assert samples["energy_distance"] > samples["energy_distance_floor"] + 3 * samples["energy_distance_floor_std"]
