"""Faults a user meets overnight: untrusted or broken checkpoints, a checkpoint from another
config, an unreachable tracking store, a tracking error mid-run, and SIGTERM during a
stage. Each must fail clearly (or carry on) and keep what was already written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ddpm.config import Params
from ddpm.errors import CheckpointError, TrackingError
from ddpm.pipeline.build import build_network, load_trained
from ddpm.pipeline.checkpoint import load_checkpoint, save_checkpoint
from ddpm.pipeline.tracking import Tracker

REPO = Path(__file__).resolve().parents[2]
META = {"dataset": "digits", "kind": "image", "shape": [1, 8, 8], "num_levels": 17}
SMALL = {"model": {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": []}}


def write_model(path: Path, raw: dict) -> Params:
    p = Params.from_dict(raw)
    net = build_network(p, META)
    save_checkpoint(path, {"params": p.to_dict(), "meta": META, "step": 0, "model": net.state_dict(),
                           "ema": net.state_dict(), "mlflow_run_id": None})
    return p


class Payload:
    """Unpickling this would run code: the checkpoint loader must refuse it."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoint_carrying_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"schema_version": 1, "params": {}, "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_truncated_checkpoint_fails_clearly(tmp_path):
    path = tmp_path / "model.pt"
    write_model(path, SMALL)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_checkpoint_from_another_config_says_what_differs(tmp_path):
    path = tmp_path / "model.pt"
    write_model(path, SMALL)
    other = Params.from_dict({**SMALL, "timesteps": 500, "beta_schedule": "cosine",
                              "model": {**SMALL["model"], "base_channels": 32}})
    with pytest.raises(CheckpointError) as err:
        load_trained(path, other, torch.device("cpu"))
    msg = str(err.value)
    assert "timesteps: checkpoint has 1000, params have 500" in msg
    assert "beta_schedule: checkpoint has 'linear', params have 'cosine'" in msg
    assert "model.base_channels: checkpoint has 16, params have 32" in msg
    # Settings that do not define the model (sampling, evaluation) may differ.
    same = Params.from_dict({**SMALL, "sample": {"num_samples": 3}, "evaluate": {"num_images": 5}})
    assert load_trained(path, same, torch.device("cpu")).diffusion.num_timesteps == 1000


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    write_model(path, SMALL)
    good = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"params": {}})
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9/", "bogus-scheme://nowhere", "sqlite:///{tmp}/a_file/m.db"])
def test_unreachable_tracking_store_is_reported_before_work(uri, monkeypatch, tmp_path):
    (tmp_path / "a_file").write_text("a file, not a folder")
    uri = uri.format(tmp=tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    start = time.time()
    with pytest.raises(TrackingError) as err:
        Tracker.open("ddpm", None, {"a": 1})
    assert uri in str(err.value) and "MLFLOW_TRACKING_URI" in str(err.value)
    assert time.time() - start < 60


def test_tracking_error_mid_run_is_reported_once_and_logging_stops(tmp_path, capsys):
    tracker = Tracker.open("ddpm", None, {"a": 1}, configured_uri=f"sqlite:///{tmp_path / 'm.db'}")

    class Broken:
        def log_batch(self, *a, **k):
            raise ConnectionError("store went away")

        log_artifact = set_terminated = set_tag = log_batch

    tracker.client = Broken()
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.log_metrics({"loss": 0.5}, step=2)
    tracker.log_artifact(tmp_path / "m.db")
    tracker.finish()
    err = capsys.readouterr().err
    assert err.count("store went away") == 1 and "writes its outputs" in err
    assert tracker.failed


# ---------------------------------------------------------------------- whole stages
def stage_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env["PYTHONPATH"] = str(REPO)
    return env


def tiny_params(tmp_path: Path, **train) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["timesteps"] = 50
    raw["model"].update(SMALL["model"])
    raw["train"].update({"steps": 150, "batch_size": 16, "log_every": 10, "checkpoint_every": 20, "num_threads": 1,
                         **train})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_sigterm_during_train_keeps_outputs_whole_and_rerun_resumes(tmp_path):
    env = stage_env(tmp_path)
    params = tiny_params(tmp_path)
    subprocess.run([sys.executable, "-m", "stages.prepare", "--params", str(params), "--out", str(tmp_path / "prep")],
                   cwd=tmp_path, env=env, check=True, capture_output=True)
    args = [sys.executable, "-m", "stages.train", "--params", str(params), "--data", str(tmp_path / "prep"),
            "--out", str(tmp_path / "models"), "--state", str(tmp_path / "ckpt" / "state.pt"),
            "--reports", str(tmp_path / "rep")]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "ckpt" / "state.pt"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert state.exists(), "no checkpoint was written"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert not (tmp_path / "models").exists()  # no half-written model
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["state.pt"]  # no temp files left
    saved_step = torch.load(state, weights_only=True)["step"]
    assert saved_step % 20 == 0 and 0 < saved_step < 150

    rerun = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming training from step {saved_step}" in rerun.stderr
    assert load_checkpoint(tmp_path / "models" / "model.pt")["step"] == 150


def test_mid_run_tracking_failure_keeps_model_and_metrics(tmp_path):
    """The store disappears after the run was opened: training, the model file and the
    metrics are still written; the stage reports the tracking failure once, then fails (exit 2)
    so that DVC does not record it as done and the next `dvc repro` logs the run."""
    env = stage_env(tmp_path)
    params = tiny_params(tmp_path, steps=20, checkpoint_every=10)
    subprocess.run([sys.executable, "-m", "stages.prepare", "--params", str(params), "--out", str(tmp_path / "prep")],
                   cwd=tmp_path, env=env, check=True, capture_output=True)
    # A wrapper that deletes the sqlite store right after the run is created.
    code = (
        "import sys, os, ddpm.pipeline.tracking as t\n"
        "orig = t.Tracker.open_training.__func__\n"
        "def opened(cls, *a, **k):\n"
        "    tr = orig(cls, *a, **k)\n"
        "    os.chmod(os.environ['DBDIR'], 0o500)\n"
        "    class Gone:\n"
        "        def __getattr__(self, name):\n"
        "            def fail(*a, **k): raise ConnectionError('tracking server unreachable')\n"
        "            return fail\n"
        "    tr.client = Gone()\n"
        "    return tr\n"
        "t.Tracker.open_training = classmethod(opened)\n"
        "from stages.train import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code, "--params", str(params), "--data", str(tmp_path / "prep"),
                          "--out", str(tmp_path / "models"), "--state", str(tmp_path / "ckpt" / "state.pt"),
                          "--reports", str(tmp_path / "rep")],
                         cwd=tmp_path, env={**env, "DBDIR": str(tmp_path / "prep")}, capture_output=True, text=True)
    os.chmod(tmp_path / "prep", 0o755)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.count("tracking server unreachable") == 1
    assert "Traceback" not in run.stderr
    assert "`dvc repro` reruns this stage, which restores the training state saved at step 20" in run.stderr
    assert (tmp_path / "models" / "model.pt").exists()
    assert len((tmp_path / "rep" / "loss.csv").read_text().splitlines()) == 1 + 2
    assert json.loads((tmp_path / "models" / "run.json").read_text())["mlflow_run_id"]
