"""The run of an experiment (issue 10): the key every stage computes, and how the stages after
train find the experiment's run or make one, in a real sqlite MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpm.errors import TrackingError
from ddpm.tracking import (
    KEY_TAG,
    TRAINED_BY_TAG,
    Tracker,
    code_fingerprint,
    experiment_key,
    merged_params,
    report_metrics,
)

PARAMS = {"seed": 0, "train.steps": 30, "train.precision": "auto", "sample.sampler": "ancestral", "sample.steps": 0}


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A working directory with code, run as DVC runs a stage (DVC_ROOT set, no experiment)."""
    root = tmp_path / "repo"
    for rel, text in {"dvc.yaml": "stages: {}\n", "ddpm/a.py": "A = 1\n", "stages/s.py": "S = 1\n",
                      "tests/t.py": "T = 1\n", "README.md": "read me\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    monkeypatch.chdir(root)
    monkeypatch.setenv("DVC_ROOT", str(root))
    for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return root


# ---------------------------------------------------------------------- the key
def test_key_is_the_same_in_every_stage_and_ignores_param_order(repo):
    assert experiment_key(PARAMS) == experiment_key(dict(reversed(PARAMS.items())))


@pytest.mark.parametrize("change", ["param", "code", "dvc_yaml", "exp_name", "baseline", "repository"])
def test_key_changes_with_params_code_experiment_and_repository(repo, monkeypatch, change):
    before = experiment_key(PARAMS)
    params = dict(PARAMS)
    if change == "param":
        params["sample.steps"] = 50
    elif change == "code":
        (repo / "stages" / "s.py").write_text("S = 2\n")
    elif change == "dvc_yaml":
        (repo / "dvc.yaml").write_text("stages: {a: {cmd: x}}\n")
    elif change == "exp_name":
        monkeypatch.setenv("DVC_EXP_NAME", "lucid-fern")
    elif change == "baseline":
        monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    else:
        monkeypatch.setenv("DVC_ROOT", str(repo.parent))
    assert experiment_key(params) != before


def test_code_fingerprint_covers_the_stage_code_only(repo):
    before = code_fingerprint(repo)
    (repo / "tests" / "t.py").write_text("T = 2\n")
    (repo / "README.md").write_text("edited\n")
    assert code_fingerprint(repo) == before
    (repo / "ddpm" / "new.py").write_text("")
    assert code_fingerprint(repo) != before


def test_auto_params_take_the_training_runs_values():
    merged = merged_params(PARAMS, {"train.precision": "fp32", "sample.steps": "1000"})
    assert merged == {**PARAMS, "train.precision": "fp32"}


def test_report_metrics_names_the_bound_and_its_parts():
    report = {"metric": "bpd", "bpd": {"total": 3.0, "stderr": 0.1}, "num_images": 40}
    assert report_metrics(report) == {"bpd": 3.0, "bpd_stderr": 0.1}


# ---------------------------------------------------------------------- finding the run
def train_run(params: dict, losses=(1.0, 0.5)) -> Tracker:
    """What the train stage does: a run with the experiment's key and its training curves."""
    tracker = Tracker.open("ddpm", None, params, tags={KEY_TAG: experiment_key(params)})
    for step, loss in enumerate(losses, start=1):
        tracker.log_metrics({"loss": loss}, step=step)
    tracker.mark_training_curves()
    return tracker


def test_stages_of_the_experiment_that_trained_use_its_run(repo):
    trained = train_run(PARAMS)
    assert Tracker.for_experiment(trained.run_id, "ddpm", PARAMS).run_id == trained.run_id


def test_experiment_reusing_a_model_gets_one_linked_run(repo):
    trained = train_run({**PARAMS, "train.precision": "auto"})
    trained.log_metrics({"bpd": 3.0})  # the training experiment's own evaluation: not copied
    sampled = {**PARAMS, "sample.sampler": "ddim", "sample.steps": 50}
    first = Tracker.for_experiment(trained.run_id, "ddpm", sampled)
    assert first.run_id != trained.run_id
    assert Tracker.for_experiment(trained.run_id, "ddpm", sampled).run_id == first.run_id  # evaluate, plot
    run = first.client.get_run(first.run_id)
    assert run.data.tags[TRAINED_BY_TAG] == trained.run_id and run.data.tags[KEY_TAG] == experiment_key(sampled)
    assert run.data.params["sample.sampler"] == "ddim" and run.data.params["sample.steps"] == "50"
    assert [(m.step, m.value) for m in first.client.get_metric_history(first.run_id, "loss")] == [(1, 1.0), (2, 0.5)]
    assert "bpd" not in run.data.metrics
    # Nothing was written into the training run.
    assert set(trained.client.get_run(trained.run_id).data.params) == set(PARAMS)


def test_two_experiments_with_the_same_params_get_two_runs(repo, monkeypatch):
    trained = train_run(PARAMS)
    sampled = {**PARAMS, "sample.steps": 50}
    monkeypatch.setenv("DVC_EXP_NAME", "exp-one")
    one = Tracker.for_experiment(trained.run_id, "ddpm", sampled).run_id
    monkeypatch.setenv("DVC_EXP_NAME", "exp-two")
    two = Tracker.for_experiment(trained.run_id, "ddpm", sampled).run_id
    assert len({trained.run_id, one, two}) == 3


def test_a_failed_training_run_is_not_the_run_of_an_older_model(repo):
    older = train_run({**PARAMS, "train.steps": 10})
    failed = Tracker.open("ddpm", None, PARAMS, tags={KEY_TAG: experiment_key(PARAMS)})
    failed.finish("FAILED", error=RuntimeError("diverged"))
    # `dvc repro -s sample` after the failure samples the older model still in models/.
    run_id = Tracker.for_experiment(older.run_id, "ddpm", PARAMS).run_id
    assert run_id not in (older.run_id, failed.run_id)


def test_retraining_with_the_same_key_uses_the_newest_model_run(repo):
    train_run(PARAMS)
    newer = train_run(PARAMS)  # `dvc repro -f`
    assert Tracker.for_experiment(newer.run_id, "ddpm", PARAMS).run_id == newer.run_id


def test_model_without_a_run_is_not_tracked(repo, capsys):
    assert Tracker.for_experiment(None, "ddpm", PARAMS) is None
    assert "no run id" in capsys.readouterr().err


def test_training_run_missing_from_the_store_still_gives_one_run(repo, capsys):
    first = Tracker.for_experiment("0" * 32, "ddpm", PARAMS)
    assert Tracker.for_experiment("0" * 32, "ddpm", PARAMS).run_id == first.run_id
    assert first.client.get_run(first.run_id).data.params["train.precision"] == "auto"
    assert "not in this store" in capsys.readouterr().err


def test_later_stage_adds_only_missing_metrics(repo):
    tracker = Tracker.for_experiment(train_run(PARAMS).run_id, "ddpm", PARAMS)
    tracker.log_metrics({"bpd": 3.0})
    tracker.log_missing_metrics({"bpd": 3.0, "bpd_stderr": 0.1})
    assert len(tracker.client.get_metric_history(tracker.run_id, "bpd")) == 1
    assert tracker.client.get_run(tracker.run_id).data.metrics["bpd_stderr"] == 0.1


def test_unreachable_store_is_reported_before_work(repo, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus-scheme://nowhere")
    with pytest.raises(TrackingError, match="MLFLOW_TRACKING_URI"):
        Tracker.for_experiment("abc", "ddpm", PARAMS)
