"""End to end: the real `dvc repro` and `dvc exp run` on a copy of this repository with tiny
settings, writing a real MLflow sqlite store; then check every declared output, the
metrics, the MLflow runs, and that a second `dvc repro` does nothing."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ddpm.pipeline.runtime import cpu_has_bf16_units

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "timesteps": 10,
    "model": {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4]},
    "train": {"steps": 30, "batch_size": 32, "warmup_steps": 5, "log_every": 10, "checkpoint_every": 20,
              "bound_every": 10},
    "sample": {"num_samples": 16, "trajectory_frames": 4},
    "evaluate": {"num_images": 40},
    # The ODE likelihood at a loose tolerance: at the default 1e-5 it takes about 530 network
    # evaluations (6 s of each evaluate stage) on this untrained network, at 1e-2 a few dozen.
    "ode": {"num_images": 4, "rtol": 0.01, "atol": 0.01},
    "classifier": {"steps": 20},
    "quality": {"kid_subset_size": 4, "sweep": ["ddim:5"]},
}

pytestmark = pytest.mark.slow


def deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        base[k] = deep_update(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict]:
    return make_workspace(tmp_path_factory.mktemp("e2e") / "repo")


def make_workspace(root: Path, overrides: dict | None = None) -> tuple[Path, dict]:
    """A fresh git + DVC repository holding this repo's tracked files, with params.yaml updated
    by ``overrides`` (default: the tiny settings ``TINY``)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file() and not rel.startswith(("reports/", "dvc.lock")):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(deep_update(params, TINY if overrides is None else overrides),
                                                     sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(GIT_AUTHOR_NAME="e2e", GIT_AUTHOR_EMAIL="e2e@example.com", GIT_COMMITTER_NAME="e2e",
               GIT_COMMITTER_EMAIL="e2e@example.com", DVC_NO_ANALYTICS="1")
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        run(cmd, root, env)
    return root, env


def dvc(args: list[str], root: Path, env: dict) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], root, env)


def run_queue(root: Path, env: dict, timeout: float = 900) -> str:
    """`dvc queue start -j 2`, then wait until no experiment is queued or running (or ``timeout``
    seconds pass); returns the last `dvc queue status`. Each `dvc queue status` costs about a
    second of CPU, which the queued stages are waiting for on a 2-core machine: it is asked only
    while no stage of this repository's queue is running."""
    dvc(["queue", "start", "-j", "2"], root, env)
    deadline = time.time() + timeout
    while True:
        if not stage_running_under(root) or time.time() >= deadline:
            status = dvc(["queue", "status"], root, env).stdout
            if ("Queued" not in status and "Running" not in status) or time.time() >= deadline:
                return status
        time.sleep(2)


def failed_queue_logs(status: str, root: Path, env: dict) -> str:
    """The end of `dvc queue logs` of each experiment that `dvc queue status` (``status``) lists as
    Failed: what an assertion on the queue prints when an experiment did not succeed."""
    return "\n".join(dvc(["queue", "logs", line.split()[0]], root, env).stdout[-3000:]
                     for line in status.splitlines()[1:] if line.split() and "Failed" in line)


def stage_running_under(root: Path) -> bool:
    """Whether a pipeline stage (`python -m stages.<name>`) runs in ``root`` or in a folder under
    it (the queue runs each experiment in a copy under .dvc/tmp/exps)."""
    import psutil

    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline, cwd = proc.info["cmdline"] or [], proc.info["cwd"] or ""
        if any(arg.startswith("stages.") for arg in cmdline) and (cwd + os.sep).startswith(str(root) + os.sep):
            return True
    return False


def mlflow_runs(root: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ddpm")
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def declared_outputs(root: Path) -> list[Path]:
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    outs = []
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for item in stage.get(key, []):
                outs.append(root / (item if isinstance(item, str) else next(iter(item))))
    return outs


def test_dvc_repro_end_to_end(workspace):
    root, env = workspace
    dvc(["repro"], root, env)

    for path in declared_outputs(root):
        assert path.exists(), f"declared output {path.relative_to(root)} was not written"
    figures = {p.name for p in (root / "reports" / "figures").glob("*.png")}
    assert figures == {"loss.png", "bound_terms.png", "samples.png", "reverse_process.png",
                       "forward_process.png", "schedule.png", "quality_nfe.png"}

    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert metrics["unit"] == "bits/dim" and metrics["num_images"] == 40 and metrics["timesteps"] == 10
    bpd = metrics["bpd"]
    assert all(math.isfinite(v) for v in bpd.values())
    assert bpd["stderr"] > 0
    assert bpd["total"] == pytest.approx(bpd["prior"] + bpd["decoder"] + bpd["kl_terms"], rel=1e-9)
    # Beside the bound, the probability-flow ODE likelihood of the same DDPM, with its NFE.
    ode = metrics["ode_bpd"]
    assert ode["num_images"] == 4 and ode["divergence"] == "hutchinson" and ode["nfe"] > 2
    assert math.isfinite(ode["total"]) and ode["stderr"] > 0
    terms = (root / "reports" / "eval" / "terms.csv").read_text().splitlines()
    assert terms[0] == "t,term,stderr" and len(terms) == 1 + 10
    # Sample quality in the same metrics file: each metric named after its features, beside its floor.
    quality = metrics["quality"]
    assert quality["classifier_test_accuracy"] == json.loads((root / "reports" / "classifier.json").read_text())[
        "test_accuracy"]
    for key in ("fd_classifier", "kid_classifier", "precision_classifier", "coverage_classifier"):
        assert math.isfinite(quality["samples"][key]) and math.isfinite(quality["samples"][f"{key}_floor"])
    assert quality["samples"]["nfe"] == 10 and list(quality["sweep"]) == ["ddim_5"]

    client, runs = mlflow_runs(root)
    assert len(runs) == 1
    run_ = runs[0]
    assert run_.data.params["beta_schedule"] == "linear"
    assert run_.data.params["train.steps"] == "30"
    assert run_.data.metrics["bpd"] == pytest.approx(bpd["total"])
    assert run_.data.metrics["ode_bpd"] == pytest.approx(ode["total"])
    assert "loss" in run_.data.metrics
    assert len(client.get_metric_history(run_.info.run_id, "loss")) == 3
    # The bound's learning curve, every train.bound_every = 10 steps, and quality against NFE.
    assert [m.step for m in client.get_metric_history(run_.info.run_id, "bpd_estimate")] == [10, 20, 30]
    assert run_.data.metrics["fd_classifier"] == pytest.approx(quality["samples"]["fd_classifier"])
    assert run_.data.metrics["fd_classifier_floor"] == pytest.approx(quality["samples"]["fd_classifier_floor"])
    assert run_.data.metrics["classifier_test_accuracy"] == pytest.approx(quality["classifier_test_accuracy"])
    nfe_curve = client.get_metric_history(run_.info.run_id, "fd_classifier_vs_nfe")
    assert sorted(m.step for m in nfe_curve) == [5, 10]
    assert run_.data.tags.get("git_revision")
    # train.precision is auto; the run records what it resolved to on this machine.
    assert run_.data.tags.get("precision") == ("bf16" if cpu_has_bf16_units() else "fp32")
    assert run_.info.status == "FINISHED"
    artifacts = {f.path for f in client.list_artifacts(run_.info.run_id, "figures")}
    assert {f"figures/{name}" for name in figures} <= artifacts

    # A second repro finds everything up to date and runs nothing.
    again = dvc(["repro"], root, env)
    assert "Running stage" not in again.stdout, again.stdout
    assert len(mlflow_runs(root)[1]) == 1


def run_record(client, run_) -> dict:
    """What a reader of the UI sees of a run: params, tags, every metric's history, artifacts."""
    run_ = client.get_run(run_.info.run_id)
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run_.info.run_id, k)]
               for k in run_.data.metrics}

    def artifacts(path=None):
        for f in client.list_artifacts(run_.info.run_id, path):
            yield from artifacts(f.path) if f.is_dir else [(f.path, f.file_size)]

    return {"params": run_.data.params, "tags": run_.data.tags, "metrics": history, "artifacts": sorted(artifacts()),
            "status": run_.info.status}


def test_experiment_reusing_the_model_gets_its_own_run(workspace):
    """An experiment that changes only sample.* keys reuses the trained model from
    DVC's cache; it gets a run of its own, linked to the training run, and the baseline's
    run is left exactly as it was. A plain `dvc repro` after editing a sample key does too."""
    root, env = workspace
    if not (root / "dvc.lock").exists():  # run alone (-k): make the baseline here
        dvc(["repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "baseline for the sampling experiment"], root, env)
    client, runs = mlflow_runs(root)
    baseline = client.get_run(json.loads((root / "models" / "run.json").read_text())["mlflow_run_id"])
    before = run_record(client, baseline)

    out = dvc(["exp", "run", "-S", "sample.sampler=ddim", "-S", "sample.steps=5"], root, env)
    assert "Running stage 'train'" not in out.stdout and "Running stage 'sample'" in out.stdout, out.stdout
    client, after = mlflow_runs(root)
    assert len(after) == len(runs) + 1
    assert run_record(client, baseline) == before
    new = run_record(client, after[-1])
    exp_name = new["tags"]["dvc_experiment"]
    show = json.loads(dvc(["exp", "show", "--json"], root, env).stdout)
    revs = [r for b in show for e in (b.get("experiments") or []) if e.get("name") == exp_name for r in e["revs"]]
    assert revs, json.dumps(show)[:2000]
    exp_bpd = revs[0]["data"]["metrics"]["reports/metrics.json"]["data"]["bpd"]["total"]
    assert new["tags"]["trained_by_run"] == baseline.info.run_id
    assert new["params"]["sample.sampler"] == "ddim" and new["params"]["sample.steps"] == "5"
    # The training keys read as they do in the training run (auto resolved), so the two compare.
    assert all(new["params"][k] == v for k, v in before["params"].items() if not k.startswith("sample."))
    assert new["metrics"]["bpd"] == [(0, pytest.approx(exp_bpd))]
    assert new["metrics"]["loss"] == before["metrics"]["loss"]  # the model's curve, copied
    # Its own samples are scored (the quality stage reran on them); the baseline keeps its numbers.
    exp_quality = revs[0]["data"]["metrics"]["reports/metrics.json"]["data"]["quality"]["samples"]
    assert exp_quality["sampler"] == "ddim" and exp_quality["nfe"] == 5
    assert new["metrics"]["fd_classifier"] == [(0, pytest.approx(exp_quality["fd_classifier"]))]
    assert {p for p, _ in new["artifacts"]} >= {"samples/grid.png", "figures/samples.png", "figures/loss.png"}
    assert "model/model.pt" not in {p for p, _ in new["artifacts"]}  # the model stays in the run that made it
    assert new["status"] == "FINISHED"

    # Back in the workspace, a plain repro after editing one sample key: one more run.
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["sample"]["num_samples"] = 8
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(["repro"], root, env)
    assert "Running stage 'train'" not in out.stdout and "Running stage 'evaluate'" not in out.stdout, out.stdout
    client, last = mlflow_runs(root)
    assert len(last) == len(after) + 1
    assert run_record(client, baseline) == before
    third = run_record(client, last[-1])
    assert third["tags"]["trained_by_run"] == baseline.info.run_id
    assert third["params"]["sample.num_samples"] == "8" and "dvc_experiment" not in third["tags"]
    # evaluate was cached: the run still shows the experiment's bound (from reports/metrics.json).
    assert third["metrics"]["bpd"] == [(0, pytest.approx(before["metrics"]["bpd"][0][1]))]
    assert dvc(["repro"], root, env).stdout.count("Running stage") == 0
    assert len(mlflow_runs(root)[1]) == len(last)
