"""The run of an experiment: the key every stage computes, and how the stages after
train find the experiment's run or make one; what the MLflow UI shows first (the dataset input,
the sample images, and what the plot stage sets through ddpm.pipeline.view: the experiment's
kind, the comparison view, the run's description), in a real sqlite MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import matplotlib
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ddpm.config import load_params
from ddpm.errors import TrackingError
from ddpm.pipeline.tracking import (
    COMPARE_VIEW_ID,
    KEY_TAG,
    TRAINED_BY_TAG,
    Tracker,
    compare_view_url,
    experiment_key,
    merged_params,
    report_metrics,
    stage_code_digest,
)
from ddpm.pipeline.view import (
    COMPARE_PARAMS,
    COMPARE_VIEW_NAME,
    HEADLINE_METRICS,
    KIND_TAG,
    MODEL_TRAINING,
    MORE_METRICS,
    NOTE_TAG,
    VIEW_TAG_PREFIX,
    compare_view_state,
    describe,
    describe_run,
    saved_view_state,
    set_experiment_view,
)

ROOT = Path(__file__).resolve().parents[2]
VIEW_TAG = VIEW_TAG_PREFIX + COMPARE_VIEW_ID

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


def test_stage_code_digest_covers_the_stage_code_only(repo):
    before = stage_code_digest(repo)
    (repo / "tests" / "t.py").write_text("T = 2\n")
    (repo / "README.md").write_text("edited\n")
    assert stage_code_digest(repo) == before
    (repo / "ddpm" / "new.py").write_text("")
    assert stage_code_digest(repo) != before


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


# ---------------------------------------------------------------------- what the UI shows first
def test_a_new_experiment_is_model_training_with_the_comparison_view(repo):
    tracker = Tracker.open("ddpm", None, PARAMS)
    # Opening a run (the train stage) leaves the experiment's tags to the plot stage.
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    assert KIND_TAG not in tags and VIEW_TAG not in tags
    set_experiment_view(tracker)  # the plot stage
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    assert tags[KIND_TAG] == MODEL_TRAINING
    # What MLflow's UI requires of a saved view (else it lists no view): a name, a number
    # createdAt and the state as a JSON string.
    record = json.loads(tags[VIEW_TAG])
    assert record["name"] == COMPARE_VIEW_NAME and isinstance(record["createdAt"], int)
    state = json.loads(record["state"])
    assert state == compare_view_state()
    assert state["orderByKey"] == "metrics.`bpd`" and state["orderByAsc"] is True
    assert state["selectedColumns"][:3] == ["attributes.`Dataset`", "metrics.`bpd`", "metrics.`bpd_stderr`"]
    assert state["columnOrder"] == state["selectedColumns"]
    # Setting it again (another experiment's plot stage) leaves the view as it is.
    set_experiment_view(Tracker.open("ddpm", None, PARAMS))
    assert tracker.client.get_experiment(tracker.experiment_id).tags[VIEW_TAG] == tags[VIEW_TAG]


def test_an_experiment_made_by_older_code_gets_the_view_and_keeps_a_chosen_kind(repo):
    client = MlflowClient()  # MLFLOW_TRACKING_URI: the test's store
    chosen = client.create_experiment("ddpm", tags={KIND_TAG: "genai_development"})
    bare = client.create_experiment("bare")
    client.set_experiment_tag(bare, VIEW_TAG, json.dumps({"name": COMPARE_VIEW_NAME, "createdAt": 1,
                                                          "updatedAt": 1, "state": "{}"}))
    set_experiment_view(Tracker.open("ddpm", None, PARAMS))
    set_experiment_view(Tracker.open("bare", None, PARAMS))
    tags = client.get_experiment(chosen).tags
    assert tags[KIND_TAG] == "genai_development"
    assert saved_view_state(tags[VIEW_TAG]) == compare_view_state()
    tags = client.get_experiment(bare).tags
    assert tags[KIND_TAG] == MODEL_TRAINING
    assert saved_view_state(tags[VIEW_TAG]) == compare_view_state()  # an outdated view is replaced


def test_the_view_names_the_params_the_pipeline_logs_and_the_bound():
    flat = load_params(ROOT / "params.yaml").flatten()
    assert set(COMPARE_PARAMS) <= set(flat)
    report = {"metric": "bpd", "bpd": {"total": 3.0, "stderr": 0.1}}
    assert set(report_metrics(report)) <= set(HEADLINE_METRICS)
    report = {"metric": "nll", "nll": {"total": 3.0, "stderr": 0.1}}
    assert set(report_metrics(report)) <= set(HEADLINE_METRICS)
    columns = compare_view_state()["selectedColumns"]
    assert len(columns) == len(set(columns)) == 1 + len(HEADLINE_METRICS) + len(COMPARE_PARAMS) + len(MORE_METRICS)


def test_the_view_url_opens_the_model_training_pages_with_the_view():
    url = urlsplit(compare_view_url("7", "http://127.0.0.1:5000/"))
    assert (url.scheme, url.netloc, url.path) == ("http", "127.0.0.1:5000", "/")
    route, query = url.fragment.split("?")
    assert route == "/experiments/7/runs"
    assert parse_qs(query) == {"workflowType": ["machine_learning"], "viewStateShareKey": [COMPARE_VIEW_ID]}
    charts = parse_qs(urlsplit(compare_view_url("7", charts=True)).fragment.split("?")[1])
    assert charts["compareRunsMode"] == ["CHART"]


def test_the_dataset_is_the_runs_input_and_a_reusing_run_has_it_too(repo):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 17, (40, 1, 8, 8), dtype=np.uint8), rng.integers(0, 17, (10, 1, 8, 8), dtype=np.uint8)
    trained = train_run(PARAMS)
    trained.log_dataset("digits", "/data/prepared", {"train": (train, np.arange(40) % 10), "test": (test, None)})
    reusing = Tracker.for_experiment(trained.run_id, "ddpm", {**PARAMS, "sample.steps": 50})
    for tracker in (trained, reusing):
        inputs = tracker.client.get_run(tracker.run_id).inputs.dataset_inputs
        contexts = {i.tags[0].value: i.dataset for i in inputs}
        assert set(contexts) == {"train", "test"} and {d.name for d in contexts.values()} == {"digits"}
        assert json.loads(contexts["train"].profile)["features_shape"] == [40, 1, 8, 8]
        assert json.loads(contexts["test"].profile)["features_shape"] == [10, 1, 8, 8]
        assert contexts["train"].digest != contexts["test"].digest
    assert not trained.failed and not reusing.failed


def grid_png(path: Path) -> Path:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(path, np.random.default_rng(0).random((16, 16)), cmap="gray")
    return path


def test_a_logged_image_is_an_artifact_and_an_image_of_the_chart_view(repo, tmp_path):
    tracker = train_run(PARAMS)
    tracker.log_image(grid_png(tmp_path / "grid.png"), "samples")
    client = tracker.client
    assert [f.path for f in client.list_artifacts(tracker.run_id, "samples")] == ["samples/grid.png"]
    # MLflow's image format: images/<key, / as ~>+step+<step>+..., and the run's tag.
    images = [f.path for f in client.list_artifacts(tracker.run_id, "images")]
    assert len(images) == 2 and all(p.startswith("images/samples~grid+step+0+") for p in images)
    assert client.get_run(tracker.run_id).data.tags["mlflow.loggedImages"] == "True"


def test_the_description_holds_the_numbers_and_links_the_grid(repo, tmp_path):
    trained = train_run(PARAMS)
    trained.log_image(grid_png(tmp_path / "grid.png"), "samples")
    trained.log_metrics({"bpd": 2.879, "bpd_stderr": 0.0221, "fd_classifier": 2.1, "fd_classifier_floor": 0.9})
    describe(trained)  # the plot stage
    trained.finish()
    exp = trained.experiment_id
    note = trained.client.get_run(trained.run_id).data.tags[NOTE_TAG]
    assert note.splitlines()[0] == "**2.879 ± 0.022 bits/dim** (test bound)"
    grid = f"#/experiments/{exp}/runs/{trained.run_id}/artifacts/samples/grid.png?workflowType=machine_learning"
    assert note.splitlines()[1] == f"Sampler: ancestral, all steps · [samples/grid.png]({grid})"
    assert "| fd_classifier | 2.1 | 0.9 |" in note.splitlines()
    # A run made for an experiment that reused the model links the run that trained it.
    reusing = Tracker.for_experiment(trained.run_id, "ddpm", {**PARAMS, "sample.sampler": "ddim", "sample.steps": 50})
    assert NOTE_TAG not in reusing.client.get_run(reusing.run_id).data.tags  # until the plot stage describes it
    describe(reusing)
    note = reusing.client.get_run(reusing.run_id).data.tags[NOTE_TAG]
    link = f"[the run that trained the model](#/experiments/{exp}/runs/{trained.run_id}?workflowType=machine_learning)"
    assert note.splitlines()[0] == f"Sampler: ddim, 50 steps · {link}"


def test_describe_run_units_floors_and_errors():
    metrics = {"nll": 1.5, "energy_distance": 0.02, "energy_distance_stderr": 0.004, "energy_distance_floor": 0.01,
               "energy_distance_floor_std": 0.003, "loss": 0.1, "precision_classifier": 0.8}
    lines = describe_run(metrics, {}, {}).splitlines()
    assert lines[0] == "**1.5 nats/dim** (test bound)"
    # Only metrics with a floor make the table; a value with its standard error as "v ± e".
    assert [line for line in lines if line.startswith("| ") and "---" not in line][1:] == [
        "| energy_distance | 0.02 ± 0.004 | 0.01 ± 0.003 |"]
    assert describe_run({}, {}, {}) == ""


def test_a_failed_stage_does_not_rewrite_the_description(repo):
    tracker = train_run(PARAMS)
    tracker.log_metrics({"bpd": 3.0})
    tracker.finish("FAILED", error=RuntimeError("diverged"))
    assert NOTE_TAG not in tracker.client.get_run(tracker.run_id).data.tags


# ---------------------------------------------------------------------- several processes, one store
OPEN_WHEN_RELEASED = """
import sys
from pathlib import Path
import mlflow.tracking  # the import costs seconds: done before the release, so the opens race
from ddpm.pipeline.tracking import Tracker
with open(sys.argv[1]) as go:  # a FIFO the test holds open for writing: this open returns at once
    Path(f"{sys.argv[1]}.ready{sys.argv[2]}").touch()
    go.read()  # returns (end of file) when the test closes its end: every worker at the same moment
tracker = Tracker.open("ddpm", None, {"seed": sys.argv[2]}, tags={"worker": sys.argv[2]})
print(tracker.experiment_id, tracker.run_id)
"""


@pytest.mark.parametrize("store", ["fresh", "without_the_experiment"])
def test_queue_and_parallel_processes_opening_one_store_at_once_all_get_their_runs(tmp_path, store):
    """The first `dvc queue start -j 2` of a fresh clone: its workers' train stages open the
    store together. Without the lock and the create-or-get, one of two failed on a fresh store
    ("duplicate column name": both created MLflow's tables) and on a store without the
    experiment ("already exists")."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if store == "without_the_experiment":
        MlflowClient(tracking_uri=uri).search_experiments()  # creates the tables, not the experiment
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DVC_ROOT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    go = tmp_path / "go"
    os.mkfifo(go)
    # Held open read-write (which never blocks on Linux) until every worker waits in its read: a
    # worker slow to import mlflow on a loaded machine still finds a writer, and closing this end
    # releases them all together (a fixed sleep before a brief open once left a late worker
    # blocked in its open for good).
    writer = os.open(go, os.O_RDWR)
    workers = [subprocess.Popen([sys.executable, "-c", OPEN_WHEN_RELEASED, str(go), str(i)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    deadline = time.time() + 120
    while time.time() < deadline and not all(Path(f"{go}.ready{i}").exists() for i in range(4)):
        if any(w.poll() is not None for w in workers):
            break  # a worker died before waiting: the assertions below show its error
        time.sleep(0.1)
    os.close(writer)
    results = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, [err[-1500:] for _, err in results]
    experiments = {out.split()[0] for out, _ in results}
    assert len(experiments) == 1
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs(list(experiments))
    assert sorted(r.data.tags["worker"] for r in runs) == ["0", "1", "2", "3"]


# ---------------------------------------------------------------------- a resumed training run
def interrupted_run(params: dict, steps: range) -> Tracker:
    tracker = Tracker.open_training("ddpm", params)
    tracker.log_training_metrics([(s, {"loss": 1.0 / s}) for s in steps])
    tracker.finish("KILLED", error=KeyboardInterrupt("signal 15"))
    return tracker


def test_resume_and_mlflow_the_resumed_training_continues_its_run_without_logging_a_point_twice(repo):
    killed = interrupted_run(PARAMS, range(10, 60, 10))  # logged up to 50; the state was saved at 40
    tracker = Tracker.open_training("ddpm", PARAMS, resume_run_id=killed.run_id)
    assert tracker.run_id == killed.run_id
    assert tracker.client.get_run(tracker.run_id).info.status == "RUNNING"
    tracker.catch_up([{"step": s, "loss": 1.0 / s} for s in range(10, 50, 10)], [])
    tracker.log_training_metrics([(s, {"loss": 1.0 / s}) for s in range(50, 80, 10)])  # recomputed 50, then on
    history = tracker.client.get_metric_history(tracker.run_id, "loss")
    assert sorted(m.step for m in history) == [10, 20, 30, 40, 50, 60, 70]


def test_resume_and_mlflow_a_run_that_cannot_be_continued_is_replayed_into_a_new_one_and_superseded(repo):
    killed = interrupted_run(PARAMS, range(10, 60, 10))
    other = {**PARAMS, "sample.steps": 50}  # the same training, another experiment: its params differ
    tracker = Tracker.open_training("ddpm", other, resume_run_id=killed.run_id)
    assert tracker.run_id != killed.run_id
    tracker.catch_up([{"step": s, "loss": 1.0 / s} for s in range(10, 50, 10)],
                     [{"step": 40, "bpd_estimate": 3.5, "bpd_estimate_stderr": 0.1}])
    tracker.log_training_metrics([(50, {"loss": 0.02})])
    client = tracker.client
    assert sorted(m.step for m in client.get_metric_history(tracker.run_id, "loss")) == [10, 20, 30, 40, 50]
    assert [m.step for m in client.get_metric_history(tracker.run_id, "bpd_estimate")] == [40]
    old = client.get_run(killed.run_id)
    assert old.info.lifecycle_stage == "deleted" and old.data.tags["ddpm.superseded_by"] == tracker.run_id
    tracker.mark_training_curves()
    assert set(client.get_run(tracker.run_id).data.tags["ddpm.training_metrics"].split(",")) == {
        "loss", "bpd_estimate", "bpd_estimate_stderr"}


def test_resume_and_mlflow_a_finished_run_is_never_deleted(repo):
    finished = Tracker.open_training("ddpm", PARAMS)
    finished.finish()
    longer = {**PARAMS, "train.steps": 60}  # a longer run continues the finished state in a new run
    tracker = Tracker.open_training("ddpm", longer, resume_run_id=finished.run_id)
    assert tracker.run_id != finished.run_id
    assert tracker.client.get_run(finished.run_id).info.lifecycle_stage == "active"


def test_credentials_are_redacted_from_uris_and_errors():
    from ddpm.pipeline.tracking import one_line, redact

    assert redact("http://alice:s3cret@host:5000/x and https://bob:pw@h") == "http://***@host:5000/x and https://***@h"
    assert redact("sqlite:///a/b@c.db") == "sqlite:///a/b@c.db"  # a path, not credentials
    line = one_line(RuntimeError("API request to http://alice:s3cret@host/api failed\nResponse body: ..."))
    assert line == "RuntimeError: API request to http://***@host/api failed"


def test_a_tracking_uri_with_credentials_in_params_is_refused(monkeypatch):
    from ddpm.pipeline.tracking import resolve_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(TrackingError, match="MLFLOW_TRACKING_PASSWORD") as err:
        resolve_tracking_uri("http://alice:s3cret@host:5000")
    assert "s3cret" not in str(err.value)


def test_a_servers_http_retries_are_capped_unless_the_user_set_them(monkeypatch):
    from ddpm.pipeline.tracking import HTTP_LIMITS, SUPPRESS_URL_PRINTING, configure_server_client

    for name in [*HTTP_LIMITS, SUPPRESS_URL_PRINTING]:  # set, then deleted: monkeypatch restores what was there
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    configure_server_client("sqlite:///m.db")
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # only for a server
    configure_server_client("http://host:5000")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_LIMITS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"  # the user's value wins
    monkeypatch.setenv(SUPPRESS_URL_PRINTING, "false")
    configure_server_client("http://alice:s3cret@host:5000")  # MLflow would print this URI: never
    assert os.environ[SUPPRESS_URL_PRINTING] == "true"


def test_the_views_chart_view_opens_on_the_sample_grids_without_the_params_list():
    """The image cards of MLflow's chart view list every param of each run above its
    image unless told not to; the view's cards show the sample stage's images, one card per row."""
    from ddpm.pipeline.view import SAMPLE_IMAGE_KEYS

    state = compare_view_state()
    (section,) = state["compareRunSections"]
    assert section["name"] == "samples" and section["columns"] == 1 and state["isAccordionReordered"] is True
    cards = state["compareRunCharts"]
    assert [c["imageKeys"] for c in cards] == [[k] for k in SAMPLE_IMAGE_KEYS]
    assert all(c["type"] == "IMAGE" and c["showRunParams"] is False and c["metricSectionId"] == section["uuid"]
               for c in cards)
    # The keys are those the sample stage logs (Tracker.log_image: "<artifact folder>/<file stem>").
    sample_stage = (ROOT / "stages" / "sample.py").read_text()
    assert 'for name in ("grid.png", "reverse_process.png")' in sample_stage and 'log_image(out / name, "samples")' in (
        sample_stage)
    assert SAMPLE_IMAGE_KEYS == ("samples/grid", "samples/reverse_process")
