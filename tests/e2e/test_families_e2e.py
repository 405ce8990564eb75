"""End to end: the families as `dvc exp run -S ...` variants of the same pipeline, with
the real DVC and MLflow on tiny digits settings: a continuous sub-VP SDE and NCSN, each with
nothing else changed, queued and run side by side by `dvc queue start -j 2` on a fresh clone (the
two workers create the MLflow store together, and no experiment is lost); then bad family settings
stop `dvc exp run` with one line naming the key."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml
from test_pipeline_e2e import deep_update, dvc, failed_queue_logs, make_workspace, mlflow_runs, run, run_queue

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root, env = make_workspace(tmp_path_factory.mktemp("families") / "repo")
    params = yaml.safe_load((root / "params.yaml").read_text())
    # Few test images for the ODE likelihood; no DDIM sweep (it belongs to family ddpm).
    deep_update(params, {"ode": {"num_images": 4}, "quality": {"sweep": []}})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "tiny settings"], root, env)
    return root, env


def experiments(root, env) -> dict[str, dict]:
    """`dvc exp show`'s data of each named experiment, by name."""
    show = json.loads(dvc(["exp", "show", "--json"], root, env).stdout)
    return {e["name"]: e["revs"][0]["data"] for b in show for e in (b.get("experiments") or []) if e.get("name")}


def test_sde_and_ncsn_queued_to_run_in_parallel_are_experiments_of_the_same_pipeline_whole_in_mlflow(workspace):
    root, env = workspace
    assert not (root / "mlflow.db").exists()  # a fresh clone: the queue's two workers create the store together
    # 100 noise scales rather than 1000 (the network's time scale and PC's steps); NCSN walks 2
    # steps per level rather than its budget of 1000 evaluations (that rule: tests/pipeline).
    dvc(["exp", "run", "--queue", "-n", "subvp", "-S", "family=sde", "-S", "sde.type=subvp",
         "-S", "sde.num_scales=100"], root, env)
    dvc(["exp", "run", "--queue", "-n", "ncsn", "-S", "family=ncsn", "-S", "sample.sampler=ald",
         "-S", "ncsn.steps_per_level=2"], root, env)
    status = run_queue(root, env)
    assert status.count("Success") == 2, status + failed_queue_logs(status, root, env)
    client, runs = mlflow_runs(root)
    assert len(runs) == 2  # one run per experiment, and no other (no half-made duplicate)
    assert sorted(r.data.tags.get("dvc_experiment") for r in runs) == ["ncsn", "subvp"]  # each written by its own
    for r in runs:  # each whole: trained, curves, quality, model and samples
        assert r.info.status == "FINISHED", r.data.tags["dvc_experiment"]
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "loss")) == [10, 20, 30]
        assert "fd_classifier" in r.data.metrics
        assert {"model", "samples"} <= {f.path for f in client.list_artifacts(r.info.run_id)}
    by_family = {r.data.params["family"]: client.get_run(r.info.run_id) for r in runs}

    shown = experiments(root, env)
    assert {"subvp", "ncsn"} <= set(shown), sorted(shown)
    sde = shown["subvp"]
    metrics = sde["metrics"]["reports/metrics.json"]["data"]
    ode = metrics["ode_bpd"]
    assert "bpd" not in metrics and metrics["ode_unit"] == "bits/dim"  # no variational bound for an SDE
    assert ode["num_images"] == 4 and ode["divergence"] == "hutchinson" and math.isfinite(ode["total"])
    assert ode["stderr"] > 0 and ode["nfe"] > 2 and ode["rtol"] == 0.01  # TINY's tolerance
    samples = metrics["quality"]["samples"]
    assert samples["sampler"] == "pc" and samples["nfe"] == 100  # Euler-Maruyama over sde.num_scales
    run_ = by_family["sde"]
    assert run_.data.params["sde.type"] == "subvp" and run_.data.params["sample.predictor"] == "euler_maruyama"
    assert run_.data.metrics["ode_bpd"] == pytest.approx(ode["total"])
    assert run_.data.metrics["ode_bpd_nfe"] == pytest.approx(ode["nfe"])
    assert run_.data.metrics["sample_nfe"] == 100 and "bpd" not in run_.data.metrics

    ncsn = shown["ncsn"]
    metrics = ncsn["metrics"]["reports/metrics.json"]["data"]
    assert metrics["likelihood"].startswith("none: family=ncsn") and "ode_bpd" not in metrics
    run_ = by_family["ncsn"]
    levels, sigma_max = int(run_.data.params["ncsn.num_levels"]), float(run_.data.params["ncsn.sigma_max"])
    assert levels > 10 and sigma_max > 1  # NCSNv2's rules on the digits (64 dimensions)
    steps = int(run_.data.params["ncsn.steps_per_level"])
    assert steps == 2
    assert metrics["quality"]["samples"]["sampler"] == "ald"
    assert metrics["quality"]["samples"]["nfe"] == levels * steps + 1
    assert run_.data.metrics["sample_nfe"] == levels * steps + 1
    artifacts = {f.path for f in client.list_artifacts(run_.info.run_id, "figures")}
    assert {"figures/schedule.png", "figures/reverse_process.png", "figures/samples.png"} <= artifacts
    assert "figures/bound_terms.png" not in artifacts


@pytest.mark.parametrize(("args", "fragment"), [
    (["-S", "family=sde", "-S", "sample.sampler=ald"], "sample.sampler='ald' is not accepted"),
    (["-S", "family=sde", "-S", "sde.sigma_max=50"], "sde.sigma_max=50.0 is not accepted; expected auto with sde.type"),
    (["-S", "sde.type=ve"], "sde.type='ve' is not accepted"),
    (["-S", "ode.rtol=0"], "ode.rtol=0.0 is not accepted; expected a finite number > 0"),
])
def test_bad_family_settings_stop_the_experiment_naming_the_key(workspace, args, fragment):
    root, env = workspace
    run(["git", "checkout", "--", "params.yaml"], root, env)  # a failed `dvc exp run` leaves its -S there too
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", *args], cwd=root, env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and fragment in proc.stdout + proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
