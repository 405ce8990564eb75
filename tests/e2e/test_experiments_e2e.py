"""End to end, with the real DVC and a real MLflow sqlite store on a fresh clone: a training stage
killed by SIGTERM and rerun by `dvc repro` leaves one run holding its whole history, finished.
(A sweep run by `dvc queue start -j 2` losing no experiment: test_families_e2e.py, whose two
families are queued side by side on a fresh clone; test_team_server.py does it against a server.)"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient
from test_pipeline_e2e import TINY, deep_update, dvc, make_workspace

pytestmark = pytest.mark.slow
STEPS = 120  # long enough to interrupt the train stage in its middle (here, and the team server's outage)


def long_run() -> dict:
    """The tiny settings, training STEPS steps with a checkpoint and a bound estimate every 30."""
    return deep_update(deep_update({}, TINY), {"train": {"steps": STEPS, "log_every": 10, "checkpoint_every": 30,
                                                         "bound_every": 30}})


def store(root: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return client, client.get_experiment_by_name("ddpm").experiment_id


def steps_of(client: MlflowClient, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def last_logged_step(db: Path, metric: str) -> int | None:
    """The highest step logged for `metric`, read without MLflow (opening a client takes about a
    second); None while the store or the metric does not exist yet, or while the writer holds the
    database locked."""
    if not db.exists():
        return None
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0)) as con:
            return con.execute("SELECT max(step) FROM metrics WHERE key = ?", (metric,)).fetchone()[0]
    except sqlite3.OperationalError:  # locked, or the tables are still being made
        return None


def train_process(dvc_pid: int) -> psutil.Process | None:
    """The python process running the train stage under `dvc repro` (not a shell that started it)."""
    try:
        matches = [p for p in psutil.Process(dvc_pid).children(recursive=True)
                   if "stages.train" in " ".join(p.cmdline())]
    except psutil.NoSuchProcess:  # a child ended while being listed: look again next time
        return None
    return next((p for p in matches if not any(c in matches for c in p.children())), None)


def test_resume_and_mlflow_sigterm_mid_training_then_dvc_repro_keeps_one_whole_history(tmp_path):
    """Killed after its first checkpoint, `dvc repro train` continues the run and, with no later
    stage to follow it, leaves it FINISHED; a later stage (`dvc repro evaluate`) then logs to it."""
    root, env = make_workspace(tmp_path / "repo", long_run())
    dvc(["repro", "prepare"], root, env)
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = root / "checkpoints" / "train_state.pt"
    # Interrupted after its first checkpoint, with points logged beyond it (which the resumed run
    # recomputes and must not log twice). Racing a running stage is flaky on a loaded machine (it
    # can reach its last step between two looks), so each look is taken with the stage stopped
    # (SIGSTOP), and the SIGTERM is sent before it runs again.
    stage = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        stage = stage or train_process(proc.pid)
        if stage is not None:
            stage.send_signal(signal.SIGSTOP)
            saved = torch.load(state, weights_only=True)["step"] if state.exists() else None
            logged = last_logged_step(root / "mlflow.db", "loss")
            if saved and logged is not None and saved + 20 <= logged < STEPS:
                stage.send_signal(signal.SIGTERM)
                stage.send_signal(signal.SIGCONT)
                break
            stage.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    else:
        pytest.fail("the train stage ended or never reached a point past its first checkpoint")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-2000:]
    interrupted_at = torch.load(state, weights_only=True)["step"]
    assert 0 < interrupted_at < STEPS
    client, exp_id = store(root)
    (killed,) = client.search_runs([exp_id])
    assert killed.info.status == "KILLED"

    dvc(["repro", "train"], root, env)
    client, exp_id = store(root)
    runs = client.search_runs([exp_id])
    # A train stage that no later stage follows: one run, finished, none left RUNNING or KILLED.
    assert [r.info.status for r in runs] == ["FINISHED"]
    (r,) = runs
    assert r.info.run_id == killed.info.run_id  # the interrupted run was continued
    assert steps_of(client, r.info.run_id, "loss") == list(range(10, STEPS + 1, 10))  # whole, once each
    assert steps_of(client, r.info.run_id, "bpd_estimate") == [30, 60, 90, 120]
    losses = [float(line.split(",")[1]) for line in (root / "reports/train/loss.csv").read_text().splitlines()[1:]]
    assert [m.value for m in sorted(client.get_metric_history(r.info.run_id, "loss"), key=lambda m: m.step)] == (
        pytest.approx(losses, rel=1e-12))

    # A later stage logs to the same run. (Every later stage opens it the same way,
    # Tracker.for_experiment with the model's run id; evaluate alone spares the start-up of
    # five more stage processes.)
    dvc(["repro", "evaluate"], root, env)
    client, exp_id = store(root)
    (after,) = client.search_runs([exp_id])
    assert after.info.run_id == r.info.run_id and after.info.status == "FINISHED"
    assert "bpd" in after.data.metrics
