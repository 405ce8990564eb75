"""MLflow tracking: the only module that imports mlflow.

One MLflow run per experiment: the train stage opens it and stores its id with the model;
sample, evaluate and plot log into the same run. The store defaults to
``sqlite:///mlflow.db`` at the repository root, also for queued DVC experiments, which
run in temporary copies (DVC tells them the original root in ``DVC_ROOT``);
``MLFLOW_TRACKING_URI`` overrides it.

Tracking must never cost a result: the store is checked before any expensive work
(``Tracker.open`` fails fast with a clear message), and an error in the middle of a run
is reported once on stderr and further logging is skipped, while the stage goes on to
write its outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ddpm.errors import TrackingError

ENV_URI = "MLFLOW_TRACKING_URI"


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


def _entry_point() -> str:
    """The script this process runs (``sys.argv[0]``), or ``python`` when there is none."""
    return sys.argv[0] if sys.argv and sys.argv[0] else "python"


class Tracker:
    """A handle on one MLflow run. Create it with ``Tracker.open`` (new run) or
    ``Tracker.resume`` (a run id saved by the train stage)."""

    def __init__(self, client: Any, run_id: str, uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.uri = uri
        self.failed = False

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

    @classmethod
    def open(cls, experiment: str, run_name: str | None, params: dict[str, Any],
             configured_uri: str = "", tags: dict[str, str] | None = None, source_name: str | None = None) -> Tracker:
        """Check the store, create a run, and log the flattened params and standard tags.

        ``source_name``: what started the run (MLflow's ``mlflow.source.name`` tag, shown as the
        run's source in the UI); by default the running script, as MLflow itself records it.
        """
        uri = resolve_tracking_uri(configured_uri)
        client, exp_id = cls._client(uri, experiment)
        all_tags = {"git_revision": git_revision() or "unknown", "mlflow.source.name": source_name or _entry_point(),
                    "mlflow.source.type": "LOCAL"}
        if os.environ.get("DVC_EXP_NAME"):
            all_tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
        if os.environ.get("DVC_EXP_BASELINE_REV"):
            all_tags["dvc_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
        all_tags.update(tags or {})
        name = run_name or all_tags.get("dvc_experiment")
        try:
            run = client.create_run(exp_id, run_name=name, tags=all_tags)
        except Exception as err:
            raise TrackingError(f"cannot create an MLflow run in {uri!r}: {err}") from None
        tracker = cls(client, run.info.run_id, uri)
        tracker.log_params(params)
        return tracker

    @classmethod
    def resume(cls, run_id: str | None, experiment: str, configured_uri: str = "") -> Tracker | None:
        """Reattach to the train stage's run; None (with a note) when there is none."""
        if not run_id:
            print("mlflow: the model has no run id; nothing will be tracked for this stage", file=sys.stderr)
            return None
        uri = resolve_tracking_uri(configured_uri)
        client, _ = cls._client(uri, experiment)
        try:
            client.get_run(run_id)
        except Exception:
            print(f"mlflow: run {run_id} is not in {uri}; nothing will be tracked for this stage", file=sys.stderr)
            return None
        return cls(client, run_id, uri)

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
        self._safely("logging metrics", self.client.log_batch, self.run_id, metrics=items)

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
