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
``DVC_ROOT``); ``MLFLOW_TRACKING_URI`` overrides it, e.g. with a team's tracking server
(``http://host:5000``, README: Working as a team). Credentials come from MLflow's own
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` or its credentials file, never from
params.yaml (which git and dvc.lock record); a ``user:password@`` in a URI is redacted from every
message, param and tag this module writes.

Tracking must never cost a result: the store is checked before any expensive work
(``Tracker.open`` and ``Tracker.for_experiment`` fail fast with a clear message), and an
error in the middle of a run (a tracking server that went away) is reported once, in one line,
on stderr and further logging is skipped, while the stage goes on to write its outputs. A
server's requests are retried for seconds, not MLflow's default minutes (``HTTP_LIMITS``).
Then the stage fails (``Tracker.check_recorded``), so that DVC does not record it as done:
the next ``dvc repro`` reruns it and logs the run (the train stage from its saved final state,
without training again).

Each run has its dataset as its input (the table's Dataset column) and its sample images as
MLflow images. The experiment's saved view of the runs table and each run's description are
``ddpm.pipeline.view``'s, which only the plot stage imports: editing a column reruns that stage
alone. Here is only the view's id, for the link the train stage prints (``compare_view_url``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from ddpm.errors import TrackingError
from ddpm.io import files_digest

ENV_URI = "MLFLOW_TRACKING_URI"
KEY_TAG = "ddpm.experiment_key"
TRAINED_BY_TAG = "trained_by_run"
TRAINING_METRICS_TAG = "ddpm.training_metrics"
SUPERSEDED_BY_TAG = "ddpm.superseded_by"
# What the stages run: a change here makes a new experiment even with the same params.
CODE_GLOBS = ("dvc.yaml", "ddpm/**/*.py", "stages/**/*.py")

# The saved view of the runs table that the plot stage keeps in the experiment (ddpm.pipeline.view);
# the URL the train stage prints names it.
COMPARE_VIEW_ID = "ddpm-compare"
# The likelihoods a report may hold: the variational bound (family ddpm) and the probability-flow
# ODE's (families ddpm and sde), each under its own name.
LIKELIHOODS = ("bpd", "nll", "ode_bpd", "ode_nll")
# How long a process waits for another to finish opening a sqlite store (seconds).
STORE_LOCK_TIMEOUT_S = 120
# MLflow's HTTP client retries a failed request for minutes by default (7 retries, backoff factor 2,
# a 120 s timeout: made for rate-limited hosted services), so a stage would stall for minutes at
# its first call after a tracking server went away. A server on the lab's network answers within
# seconds or is down. Set for a server's URI only, and only where the user set no value.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
SUPPRESS_URL_PRINTING = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
# ``scheme://user:password@host``: the credentials part, which no message, param or tag may show.
_CREDENTIALS = re.compile(r"(?<=://)[^/@\s:]*:[^/@\s]*@")


def repo_root() -> Path:
    """The repository the experiment belongs to (the original one for queued DVC runs)."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"])
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        return Path(out.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return Path.cwd()


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it (``user:password@``) replaced by ``***@``."""
    return _CREDENTIALS.sub("***@", text)


def one_line(err: BaseException) -> str:
    """An exception as one short line for stderr: its type and the first line of its message
    (MLflow's carry the server's whole response body), credentials redacted."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = redact(text)
    return f"{type(err).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def resolve_tracking_uri(configured: str = "") -> str:
    """``MLFLOW_TRACKING_URI`` > ``mlflow.tracking_uri`` in params > the repo's sqlite store.

    A configured URI with credentials is refused: params.yaml is committed to git."""
    if os.environ.get(ENV_URI):
        return os.environ[ENV_URI]
    if configured:
        if redact(configured) != configured:
            raise TrackingError(f"mlflow.tracking_uri={redact(configured)!r} holds credentials, and params.yaml is "
                                "committed to git: give them in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                                "(or MLflow's credentials file, ~/.mlflow/credentials) instead")
        return configured
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (reached over HTTP) rather than a store opened in-process."""
    return uri.startswith(("http://", "https://"))


def configure_server_client(uri: str) -> None:
    """For a tracking server: apply ``HTTP_LIMITS`` where the user set none; keep urllib3's
    "Retrying ..." warnings (one per retry) off stderr, the stage says in one line what failed;
    and stop MLflow printing "View run ... at <tracking URI>" when each stage closes the run:
    it repeats the link the train stage prints, and shows a URI's password."""
    if not is_server(uri):
        return
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault(SUPPRESS_URL_PRINTING, "true")
    if redact(uri) != uri:
        os.environ[SUPPRESS_URL_PRINTING] = "true"
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def stage_code_digest(root: Path) -> str:
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
        "code": stage_code_digest(Path(code_root)),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics of reports/metrics.json: each likelihood's total under its own name
    (``bpd``, ``nll``, ``ode_bpd``, ``ode_nll``), its numeric parts and settings as
    ``bpd_stderr``, ``ode_bpd_nfe`` etc. (the ODE's divergence, a word, is a param's business)."""
    out = {}
    for name in LIKELIHOODS:
        for key, value in report.get(name, {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[name if key == "total" else f"{name}_{key}"] = value
    return out


def merged_params(current: dict[str, Any], trained: dict[str, str]) -> dict[str, Any]:
    """The experiment's params, with ``auto`` replaced by what the training run resolved it
    to, so the run compares key by key with the run that trained its model."""
    return {k: trained.get(k, v) if v == "auto" else v for k, v in current.items()}


def compare_view_url(experiment_id: str, server: str = "http://127.0.0.1:5000", charts: bool = False) -> str:
    """The link that opens the comparison view of an experiment in ``mlflow ui`` at ``server``.

    ``workflowType=machine_learning``: MLflow 3 chooses between its GenAI pages and its model
    training pages by a setting of the browser (GenAI unless the user switched), not by the
    experiment; the link switches it. ``charts``: the chart view (sample grids, curves, bars).
    """
    query = {"workflowType": "machine_learning", "viewStateShareKey": COMPARE_VIEW_ID}
    if charts:
        query["compareRunsMode"] = "CHART"
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?" + "&".join(f"{k}={v}" for k, v in query.items())


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _store_lock(uri: str) -> Any:
    """An inter-process lock on a sqlite store (``<store>.lock`` beside it), or no lock for a
    store that is a server (it serialises its own writes)."""
    db = _sqlite_path(uri)
    if db is None:
        return contextlib.nullcontext()
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{db}.lock", timeout=STORE_LOCK_TIMEOUT_S)


def _create_experiment(client: Any, uri: str, experiment: str) -> str:
    """Create ``experiment``; when another process created it first, its id."""
    from mlflow.exceptions import MlflowException

    db = _sqlite_path(uri)
    # Artifacts beside a sqlite store, by absolute path, so queued runs in temporary copies
    # write them to the original repository.
    artifact_location = (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None
    try:
        return client.create_experiment(experiment, artifact_location=artifact_location)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(experiment).experiment_id


def _same_params(run: Any, params: dict[str, Any]) -> bool:
    """Whether ``run`` logged no param with another value than ``params`` has (MLflow's params
    cannot change)."""
    return all(run.data.params.get(k, str(v)) == str(v) for k, v in params.items())


def _entry_point() -> str:
    """The script this process runs (``sys.argv[0]``), or ``python`` when there is none."""
    return sys.argv[0] if sys.argv and sys.argv[0] else "python"


class Tracker:
    """A handle on one MLflow run. Create it with ``Tracker.open`` (a new run, for the train
    stage) or ``Tracker.for_experiment`` (the run of the experiment, for the later stages)."""

    def __init__(self, client: Any, run_id: str, uri: str, experiment_id: str = "") -> None:
        self.client = client
        self.run_id = run_id
        self.uri = uri
        self.experiment_id = experiment_id
        self.failed = False
        self.metric_names: set[str] = set()
        self.logged_steps: dict[str, int] = {}  # the last step of each metric the run holds (training curves)

    # ------------------------------------------------------------------ opening
    @staticmethod
    def _client(uri: str, experiment: str) -> tuple[Any, str]:
        """A client of the store at ``uri`` and the id of ``experiment``, created when missing.

        Safe when several processes start at once (the workers of ``dvc queue start -j N``):
        MLflow creates a new sqlite store's tables on first use, which two processes racing
        each other break ("duplicate column name"), so a sqlite store is opened under a file
        lock beside it; and the experiment is looked up and created as one step (a create that
        loses the race to another process takes the experiment that process made)."""
        from mlflow.tracking import MlflowClient

        configure_server_client(uri)
        try:
            with _store_lock(uri):
                client = MlflowClient(tracking_uri=uri)
                exp = client.get_experiment_by_name(experiment)
                exp_id = exp.experiment_id if exp is not None else _create_experiment(client, uri, experiment)
        except Exception as err:  # mlflow raises many types: connection, SQL, malformed URI
            raise TrackingError(
                f"cannot use the MLflow tracking store {redact(uri)!r} ({one_line(err)}). Set {ENV_URI} to a "
                f"reachable store (a server's credentials: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD), "
                f"or unset it to use sqlite:///mlflow.db at the repository root."
            ) from None
        return client, exp_id

    @staticmethod
    def _standard_tags(source_name: str | None) -> dict[str, str]:
        # Which machine and clone wrote the run: runs from several machines meet in a team's server.
        tags = {"git_revision": git_revision() or "unknown", "mlflow.source.name": source_name or _entry_point(),
                "mlflow.source.type": "LOCAL", "ddpm.host": socket.gethostname(),
                "ddpm.repository": str(repo_root().resolve())}
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
            raise TrackingError(f"cannot create an MLflow run in {redact(uri)!r}: {one_line(err)}") from None
        return cls(client, run.info.run_id, uri, exp_id)

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
    def open_training(cls, experiment: str, params: dict[str, Any], configured_uri: str = "",
                      tags: dict[str, str] | None = None, resume_run_id: str | None = None) -> Tracker:
        """The train stage's run. ``resume_run_id``: the run that a training state restored from
        an interrupted run recorded. That run is continued when the store still holds it, active,
        with params that agree with ``params`` (a ``dvc repro`` after an interruption), so the
        experiment keeps one run and one history; otherwise a new run is opened (``catch_up``
        replays the restored history into it), and the unfinished run it supersedes is deleted
        (MLflow keeps deleted runs until ``mlflow gc``), so no run is left RUNNING or KILLED
        for a stage that went on to finish."""
        uri = resolve_tracking_uri(configured_uri)
        client, exp_id = cls._client(uri, experiment)
        tags = cls._standard_tags(None) | (tags or {})
        previous = cls._existing_run(client, resume_run_id) if resume_run_id else None
        if previous is not None and previous.info.experiment_id == exp_id and _same_params(previous, params):
            tracker = cls(client, previous.info.run_id, uri, exp_id)
            tracker.safely("continuing the run", client.update_run, tracker.run_id, "RUNNING")
            tracker.set_tags(tags)
            tracker.log_params(params)
            tracker._read_logged_steps()
            print(f"mlflow: continuing run {tracker.run_id}, which the resumed training state was logged to",
                  file=sys.stderr)
            return tracker
        tracker = cls._create(client, exp_id, uri, None, tags)
        tracker.log_params(params)
        if previous is not None and previous.info.status != "FINISHED":
            tracker._supersede(previous)
        return tracker

    @staticmethod
    def _existing_run(client: Any, run_id: str) -> Any:
        """The active run ``run_id`` of the store, or None."""
        try:
            run = client.get_run(run_id)
        except Exception:
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def _supersede(self, previous: Any) -> None:
        """Delete the unfinished run whose history this run has taken over, saying so."""
        old = previous.info.run_id
        self.safely("tagging the superseded run", self.client.set_tag, old, SUPERSEDED_BY_TAG, self.run_id)
        self.safely("deleting the superseded run", self.client.delete_run, old)
        print(f"mlflow: run {old} ({previous.info.status}, interrupted) is superseded by run {self.run_id}, which "
              "holds its training history; it was deleted (restore it in the UI until `mlflow gc`)", file=sys.stderr)

    def _read_logged_steps(self) -> None:
        """The last step of every metric the run holds, so that points logged before an
        interruption are not logged twice."""
        self.safely("reading the run's history", self._load_logged_steps)

    def _load_logged_steps(self) -> None:
        for name in self.client.get_run(self.run_id).data.metrics:
            history = self.client.get_metric_history(self.run_id, name)
            self.logged_steps[name] = max((m.step for m in history), default=-1)

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
            raise TrackingError(f"cannot search the MLflow runs in {redact(uri)!r}: {one_line(err)}") from None
        for run in runs:
            if run.info.run_id == model_run_id or run.data.tags.get(TRAINED_BY_TAG) == model_run_id:
                return cls(client, run.info.run_id, uri, exp_id)
        trained = cls._training_run(client, model_run_id)
        tags = cls._standard_tags(source_name) | {KEY_TAG: key, TRAINED_BY_TAG: model_run_id}
        tracker = cls._create(client, exp_id, uri, None, tags)
        tracker.log_params(merged_params(params, trained.data.params if trained else {}))
        if trained is not None:
            tracker.copy_training_curves(trained)
            tracker.copy_inputs(trained)
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
    def safely(self, what: str, fn, *args, **kwargs) -> None:
        """``fn(*args, **kwargs)``; when it fails, say so once on stderr and log nothing more to the run
        (``failed``), the stage going on to write its outputs (``check_recorded``)."""
        if self.failed:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:
            self.failed = True
            from tqdm.auto import tqdm

            # tqdm.write: on a line of its own, not glued to a progress bar (training's, say).
            tqdm.write(f"mlflow: {what} failed ({one_line(err)}); the stage keeps going and "
                       f"writes its outputs, but logs nothing more to run {self.run_id}", file=sys.stderr)

    def check_recorded(self, rerun: str) -> None:
        """Raise ``TrackingError`` when logging failed (``safely`` said what): called by a stage
        after it wrote its outputs, so that DVC does not record the stage as done and ``rerun``
        (what the next ``dvc repro`` does about it) logs the run once the store is back."""
        if self.failed:
            raise TrackingError(f"the run {self.run_id} in {redact(self.uri)!r} is incomplete: logging to it failed "
                                f"(said above); this stage's outputs are written. Once the store is reachable, "
                                f"`dvc repro` {rerun}")

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, redact(str(v))) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.safely("logging params", self.client.log_batch, self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.metric_names.update(metrics)
        self.safely("logging metrics", self.client.log_batch, self.run_id, metrics=items)

    def log_training_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Log training curves, ``(step, metrics)`` rows, skipping the points the run already
        holds (a continued run's points up to its interruption, which the resumed training
        recomputes from the same seeds); they are the run's training curves
        (``mark_training_curves``)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for step, metrics in rows for k, v in metrics.items()
                 if step > self.logged_steps.get(k, -1)]
        for step, metrics in rows:
            self.metric_names.update(metrics)
            for k in metrics:
                self.logged_steps[k] = max(step, self.logged_steps.get(k, -1))
        for i in range(0, len(items), 1000):  # MLflow's batch limit
            self.safely("logging metrics", self.client.log_batch, self.run_id, metrics=items[i:i + 1000])

    def catch_up(self, history: list[dict[str, float]], curve: list[dict[str, float]]) -> None:
        """Give the run the history a resumed training state restored (rows with a ``step``):
        all of it in a new run, nothing in a continued run that already holds it."""
        self.log_training_metrics([(int(row["step"]), {k: v for k, v in row.items() if k != "step"})
                                   for row in [*history, *curve]])

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
        self.safely("copying the training curves", self._copy_curves, trained)

    def _copy_curves(self, trained: Any) -> None:
        for name in filter(None, trained.data.tags.get(TRAINING_METRICS_TAG, "").split(",")):
            history = self.client.get_metric_history(trained.info.run_id, name)
            for i in range(0, len(history), 1000):  # MLflow's batch limit
                self.client.log_batch(self.run_id, metrics=history[i:i + 1000])

    def copy_inputs(self, trained: Any) -> None:
        """Give this run the datasets ``trained`` (an MLflow run) was trained on as its inputs."""
        if trained.inputs and trained.inputs.dataset_inputs:
            self.safely("copying the dataset inputs", self.client.log_inputs, self.run_id,
                         trained.inputs.dataset_inputs)

    def log_dataset(self, name: str, source: str, splits: dict[str, tuple[Any, Any]]) -> None:
        """Log a dataset as the run's input, one entry per split (``{"train": (features, labels or
        None)}``; the split is the entry's context): MLflow records a digest of the arrays, their
        shapes and dtypes, and the UI shows the dataset in the runs table's Dataset column.
        ``source``: where the arrays are (a local path)."""
        self.safely("logging the dataset", self._log_dataset, name, source, splits)

    def _log_dataset(self, name: str, source: str, splits: dict[str, tuple[Any, Any]]) -> None:
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for split, (features, labels) in splits.items():
            with warnings.catch_warnings():  # a local path matches two of MLflow's source types, both local
                warnings.simplefilter("ignore", UserWarning)
                dataset = mlflow.data.from_numpy(features, source=source, targets=labels, name=name)
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", split)]))
        self.client.log_inputs(self.run_id, datasets=inputs)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.safely(f"logging {path}", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_image(self, path: str | Path, artifact_path: str) -> None:
        """Log an image file as an artifact (as ``log_artifact``) and as an MLflow image with the key
        ``<artifact_path>/<file stem>``, which the chart view shows side by side for every run
        (in a section named ``artifact_path``)."""
        self.log_artifact(path, artifact_path)
        self.safely(f"logging the image {path}", self._log_image, Path(path), artifact_path)

    def _log_image(self, path: Path, artifact_path: str) -> None:
        from PIL import Image

        with Image.open(path) as image:
            self.client.log_image(self.run_id, image.convert("RGB"), key=f"{artifact_path}/{path.stem}", step=0)


    def view_url(self, server: str | None = None) -> str:
        """``compare_view_url`` of this run's experiment: on the tracking server itself (its
        address without credentials), else ``server`` (default: where ``mlflow ui`` serves)."""
        default = _CREDENTIALS.sub("", self.uri) if is_server(self.uri) else "http://127.0.0.1:5000"
        return compare_view_url(self.experiment_id, server or default)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.safely("setting tags", self.client.set_tag, self.run_id, k, redact(str(v)))

    def finish(self, status: str = "FINISHED", error: BaseException | None = None) -> None:
        """Close the run; a failed run records why (tag ``error``), so the UI says it."""
        if error is not None:
            self.set_tags({"error": f"{type(error).__name__}: {error}"[:5000]})
        self.safely("closing the run", self.client.set_terminated, self.run_id, status)
