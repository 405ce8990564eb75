"""MLflow tracking: the only module that imports mlflow.

One MLflow run per experiment. The stages of an experiment find its run by a key they all
compute the same way (``experiment_key``: the DVC experiment, the repository, every param
and the code), stored in the run's ``ddpm.experiment_key`` tag. The train stage always opens
a new run with that key; sample, evaluate and plot take the newest run with the key that
trained the model they use, or, when the model was reused from DVC's cache, was made for it
(tag ``trained_by_run``). When there is none (this experiment did not train the model), the
first of them creates it, with the experiment's params and the model's training curves, so
no stage ever writes into another experiment's run.

The store defaults to ``sqlite:///mlflow.db`` at the repository root, also for queued DVC
experiments, which run in temporary copies (DVC tells them the original root in
``DVC_ROOT``); ``MLFLOW_TRACKING_URI`` overrides it.

Tracking must never cost a result: the store is checked before any expensive work
(``Tracker.open`` and ``Tracker.for_experiment`` fail fast with a clear message), and an
error in the middle of a run is reported once on stderr and further logging is skipped,
while the stage goes on to write its outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ddpm.errors import TrackingError
from ddpm.io import files_digest

ENV_URI = "MLFLOW_TRACKING_URI"
KEY_TAG = "ddpm.experiment_key"
TRAINED_BY_TAG = "trained_by_run"
TRAINING_METRICS_TAG = "ddpm.training_metrics"
# What the stages run: a change here makes a new experiment even with the same params.
CODE_GLOBS = ("dvc.yaml", "ddpm/**/*.py", "stages/**/*.py")


def repo_root() -> Path:
    """The repository the experiment belongs to (the original one for queued DVC runs)."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"])
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        return Path(out.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return Path.cwd()


def resolve_tracking_uri(configured: str = "") -> str:
    """``MLFLOW_TRACKING_URI`` > ``mlflow.tracking_uri`` in params > the repo's sqlite store."""
    if os.environ.get(ENV_URI):
        return os.environ[ENV_URI]
    if configured:
        return configured
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def code_fingerprint(root: Path) -> str:
    """A hash of the code the stages run, from the files themselves, so uncommitted edits
    and the temporary copies of queued experiments count as what they are."""
    return files_digest(root, (p for pattern in CODE_GLOBS for p in root.glob(pattern) if p.is_file()))


def experiment_key(params: dict[str, Any], code_root: str | Path = ".") -> str:
    """The identity of one experiment, the same in each of its stages.

    ``params``: every flattened param as read from params.yaml (not the resolved ones, which
    only the train stage knows). ``dvc exp run`` gives each experiment a name (and its
    queued copies the original root in ``DVC_ROOT``), so two experiments never share a key,
    even with the same params; a plain ``dvc repro`` has no name, and there the workspace's
    params and code are the experiment: a repro that changed neither runs no stage.
    """
    parts = {
        "dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),
        "dvc_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        "repository": str(repo_root().resolve()),
        "params": {k: str(v) for k, v in params.items()},
        "code": code_fingerprint(Path(code_root)),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics of reports/metrics.json: the bound's total under its own name
    (``bpd`` or ``nll``), its parts as ``bpd_stderr`` etc."""
    metric = report["metric"]
    return {metric if k == "total" else f"{metric}_{k}": v for k, v in report[metric].items()}


def merged_params(current: dict[str, Any], trained: dict[str, str]) -> dict[str, Any]:
    """The experiment's params, with ``auto`` replaced by what the training run resolved it
    to, so the run compares key by key with the run that trained its model."""
    return {k: trained.get(k, v) if v == "auto" else v for k, v in current.items()}


def _entry_point() -> str:
    """The script this process runs (``sys.argv[0]``), or ``python`` when there is none."""
    return sys.argv[0] if sys.argv and sys.argv[0] else "python"


class Tracker:
    """A handle on one MLflow run. Create it with ``Tracker.open`` (a new run, for the train
    stage) or ``Tracker.for_experiment`` (the run of the experiment, for the later stages)."""

    def __init__(self, client: Any, run_id: str, uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.uri = uri
        self.failed = False
        self.metric_names: set[str] = set()

    # ------------------------------------------------------------------ opening
    @staticmethod
    def _client(uri: str, experiment: str) -> tuple[Any, str]:
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                artifact_location = None
                if uri.startswith("sqlite:///"):
                    # Artifacts beside the store, by absolute path, so queued runs in
                    # temporary copies write them to the original repository.
                    db = Path(uri[len("sqlite:///"):])
                    artifact_location = (db.parent / "mlartifacts").resolve().as_uri()
                # The tag makes the MLflow 3 UI open the experiment as model training, not GenAI.
                exp_id = client.create_experiment(experiment, artifact_location=artifact_location,
                                                  tags={"mlflow.experimentKind": "custom_model_development"})
            else:
                exp_id = exp.experiment_id
        except Exception as err:  # mlflow raises many types: connection, SQL, malformed URI
            raise TrackingError(
                f"cannot use the MLflow tracking store {uri!r} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). Set {ENV_URI} to a reachable store, "
                f"or unset it to use sqlite:///mlflow.db at the repository root."
            ) from None
        return client, exp_id

    @staticmethod
    def _standard_tags(source_name: str | None) -> dict[str, str]:
        tags = {"git_revision": git_revision() or "unknown", "mlflow.source.name": source_name or _entry_point(),
                "mlflow.source.type": "LOCAL"}
        if os.environ.get("DVC_EXP_NAME"):
            tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
        if os.environ.get("DVC_EXP_BASELINE_REV"):
            tags["dvc_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
        return tags

    @classmethod
    def _create(cls, client: Any, exp_id: str, uri: str, run_name: str | None, tags: dict[str, str]) -> Tracker:
        try:
            run = client.create_run(exp_id, run_name=run_name or tags.get("dvc_experiment"), tags=tags)
        except Exception as err:
            raise TrackingError(f"cannot create an MLflow run in {uri!r}: {err}") from None
        return cls(client, run.info.run_id, uri)

    @classmethod
    def open(cls, experiment: str, run_name: str | None, params: dict[str, Any],
             configured_uri: str = "", tags: dict[str, str] | None = None, source_name: str | None = None) -> Tracker:
        """Check the store, create a run, and log the flattened params and standard tags.

        ``source_name``: what started the run (MLflow's ``mlflow.source.name`` tag, shown as the
        run's source in the UI); by default the running script, as MLflow itself records it.
        """
        uri = resolve_tracking_uri(configured_uri)
        client, exp_id = cls._client(uri, experiment)
        tracker = cls._create(client, exp_id, uri, run_name, cls._standard_tags(source_name) | (tags or {}))
        tracker.log_params(params)
        return tracker

    @classmethod
    def for_experiment(cls, model_run_id: str | None, experiment: str, params: dict[str, Any],
                       configured_uri: str = "", source_name: str | None = None) -> Tracker | None:
        """The run of the experiment this stage belongs to, for a stage that uses a trained model.

        ``model_run_id``: the run that trained the model (saved with it); ``params``: every
        flattened param as read from params.yaml. The newest run with this experiment's key
        that trained the model or was made for it; when there is none (the model came from
        DVC's cache, or its training failed and an older model is in use), a new run linked
        to the training run by the ``trained_by_run`` tag. None (with a note) for a model
        that no tracked run trained.
        """
        if not model_run_id:
            print("mlflow: the model has no run id; nothing will be tracked for this stage", file=sys.stderr)
            return None
        uri = resolve_tracking_uri(configured_uri)
        client, exp_id = cls._client(uri, experiment)
        key = experiment_key(params)
        try:
            runs = client.search_runs([exp_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'",
                                      order_by=["attributes.start_time DESC"], max_results=200)
        except Exception as err:
            raise TrackingError(f"cannot search the MLflow runs in {uri!r}: {err}") from None
        for run in runs:
            if run.info.run_id == model_run_id or run.data.tags.get(TRAINED_BY_TAG) == model_run_id:
                return cls(client, run.info.run_id, uri)
        trained = cls._training_run(client, model_run_id)
        tags = cls._standard_tags(source_name) | {KEY_TAG: key, TRAINED_BY_TAG: model_run_id}
        if trained is not None:
            tags["mlflow.note.content"] = (f"The model was trained by run {trained.info.run_name} ({model_run_id}) "
                                           f"and reused from DVC's cache; its training curves are copied here.")
        tracker = cls._create(client, exp_id, uri, None, tags)
        tracker.log_params(merged_params(params, trained.data.params if trained else {}))
        if trained is not None:
            tracker.copy_training_curves(trained)
        return tracker

    @staticmethod
    def _training_run(client: Any, run_id: str) -> Any:
        """The run that trained the model, or None (with a note) when the store does not have it."""
        try:
            return client.get_run(run_id)
        except Exception:
            print(f"mlflow: the run that trained the model ({run_id}) is not in this store; this "
                  f"experiment's run will not show its resolved params and its curves", file=sys.stderr)
            return None

    # ------------------------------------------------------------------ logging
    def _safely(self, what: str, fn, *args, **kwargs) -> None:
        if self.failed:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:
            self.failed = True
            print(f"mlflow: {what} failed ({type(err).__name__}: {err}); the stage keeps going and "
                  f"writes its outputs, but logs nothing more to run {self.run_id}", file=sys.stderr)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self._safely("logging params", self.client.log_batch, self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.metric_names.update(metrics)
        self._safely("logging metrics", self.client.log_batch, self.run_id, metrics=items)

    def log_missing_metrics(self, metrics: dict[str, float]) -> None:
        """Log the metrics the run does not have yet: a later stage completing a run whose
        earlier stage was reused from DVC's cache, without repeating what that stage logged."""
        try:
            have = self.client.get_run(self.run_id).data.metrics
        except Exception:
            have = {}
        self.log_metrics({k: v for k, v in metrics.items() if k not in have})

    def mark_training_curves(self) -> None:
        """Name the metrics logged so far as the training curves (tag ``ddpm.training_metrics``),
        which a run that reuses this run's model copies."""
        self.set_tags({TRAINING_METRICS_TAG: ",".join(sorted(self.metric_names))})

    def copy_training_curves(self, trained: Any) -> None:
        """Copy the training curves of ``trained`` (an MLflow run) into this run, step for step."""
        self._safely("copying the training curves", self._copy_curves, trained)

    def _copy_curves(self, trained: Any) -> None:
        for name in filter(None, trained.data.tags.get(TRAINING_METRICS_TAG, "").split(",")):
            history = self.client.get_metric_history(trained.info.run_id, name)
            for i in range(0, len(history), 1000):  # MLflow's batch limit
                self.client.log_batch(self.run_id, metrics=history[i:i + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._safely(f"logging {path}", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._safely("setting tags", self.client.set_tag, self.run_id, k, v)

    def finish(self, status: str = "FINISHED", error: BaseException | None = None) -> None:
        """Close the run; a failed run records why (tag ``error``), so the UI says it."""
        if error is not None:
            self.set_tags({"error": f"{type(error).__name__}: {error}"[:5000]})
        self._safely("closing the run", self.client.set_terminated, self.run_id, status)
