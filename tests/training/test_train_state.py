"""The resumable training state: restorable whatever the map location, the same under DDP
(rank-independent), refused across device types, resumed exactly on CUDA; and the config
stored with the model holds what training used, not ``auto``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from test_training import assert_same_weights, digits_meta, levels, params

from ddpm.config import Params
from ddpm.errors import CheckpointError
from ddpm.pipeline.build import load_trained
from ddpm.pipeline.checkpoint import load_checkpoint, save_checkpoint
from ddpm.pipeline.runtime import DistInfo, precision_name, resolve_device
from ddpm.training.loop import setup_training, train, training_precision
from ddpm.training.state import restore_training_state, run_identity
from stages import prepare
from stages import train as train_stage

# One torch thread and a forked RNG for every test here (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def tensors(tree, path=""):
    """(dotted path, tensor) for every tensor in a nested dict/list."""
    if isinstance(tree, torch.Tensor):
        yield path, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from tensors(v, f"{path}.{k}" if path else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from tensors(v, f"{path}.{i}")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_training_state_restores_whatever_the_map_location(tmp_path, device):
    """The loop reads its state on the CPU whatever device wrote it, and load_state_dict puts
    every tensor where the parameters live: each restored tensor of the weights, the EMA and
    the optimizer (the fused Adam's step counts too) lies on the parameters' device and equals
    the saved one, and the scheduler, scaler, step and history are the saved ones. The state
    restored into is poisoned first (NaN weights and EMA, a fresh optimizer), so that only the
    restore can make it equal."""
    device = torch.device(device)
    path = tmp_path / "state.pt"
    p = params(steps=4)
    train(p, levels(), digits_meta(), device, state_path=path, progress=False)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    trainer = setup_training(p, digits_meta(), device)
    state = trainer.state
    with torch.no_grad():
        for tensor in (*state.model.state_dict().values(), *state.ema.state_dict().values()):
            tensor.fill_(float("nan"))
    identity = run_identity(p, precision_name(trainer.amp_dtype), device, DistInfo())
    assert restore_training_state(path, state, identity, p.train.steps)
    restored = {"model": state.model.state_dict(), "ema": state.ema.state_dict(),
                "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
                "scaler": state.scaler.state_dict()}
    got, want = dict(tensors(restored)), dict(tensors({k: saved[k] for k in restored}))
    assert got.keys() == want.keys()
    num_params = len(list(state.model.parameters()))
    assert sum(k.startswith("optimizer.state.") for k in got) == 3 * num_params  # step, exp_avg, exp_avg_sq
    for name, tensor in got.items():
        assert tensor.device == next(state.model.parameters()).device, f"{name} is on {tensor.device}"
        assert tensor.dtype == want[name].dtype and torch.equal(tensor.cpu(), want[name]), name
    assert restored["optimizer"]["param_groups"] == saved["optimizer"]["param_groups"]
    assert restored["scheduler"] == saved["scheduler"] and restored["scaler"] == saved["scaler"]
    assert (state.step, state.history, state.curve) == (saved["step"], saved["history"], saved["curve"])
    assert state.step == 4


def test_state_saved_on_another_device_type_is_refused_with_one_line(tmp_path):
    state = tmp_path / "state.pt"
    train(params(steps=4), levels(), digits_meta(), CPU, state_path=state, progress=False)
    saved = load_checkpoint(state)
    assert saved["device_type"] == "cpu"
    saved["device_type"] = "cuda"
    save_checkpoint(state, {k: v for k, v in saved.items() if k != "schema_version"})
    before = state.read_bytes()
    with pytest.raises(CheckpointError) as err:
        train(params(steps=8), levels(), digits_meta(), CPU, state_path=state, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert f"{str(state)!r} was saved on cuda and this run trains on cpu" in message
    assert "set train.device to cuda" in message
    assert state.read_bytes() == before  # the other device's progress is kept


def run_ddp(tmp_path: Path, *runs: dict) -> None:
    """Each of ``runs`` (train overrides, see _ddp_worker.py) in turn, in one torchrun start."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).parent / "_ddp_worker.py"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(worker), str(tmp_path), "fp32", json.dumps(list(runs))],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_resume_under_ddp_interrupted_mid_epoch_equals_the_uninterrupted_ddp_run(tmp_path):
    """64 examples, global batch 16: 4 batches per epoch. The first run stops at step 6 (its
    state saved there, half-way through the second epoch); the second continues to step 12.
    With dropout, each rank's own dropout stream matters after the resume too."""
    np.save(tmp_path / "levels.npy", levels())
    common = {"dropout": 0.1, "checkpoint_every": 3, "log_every": 3}
    state = str(tmp_path / "state.pt")
    # The uninterrupted run and the first part share one torchrun start; the resume is a new one.
    run_ddp(tmp_path, {"steps": 12, "tag": "full_", **common}, {"steps": 6, "state": state, "tag": "first_", **common})
    assert torch.load(state, weights_only=True)["step"] == 6
    run_ddp(tmp_path, {"steps": 12, "state": state, "tag": "resumed_", **common})
    full, resumed = ({r: torch.load(tmp_path / f"{tag}rank{r}.pt", weights_only=True) for r in (0, 1)}
                     for tag in ("full_", "resumed_"))
    for r in (0, 1):
        assert_same_weights(resumed[r]["model"], full[r]["model"])
        assert_same_weights(resumed[r]["ema"], full[r]["ema"])
    assert [row["step"] for row in resumed[0]["history"]] == [3, 6, 9, 12]
    np.testing.assert_array_equal([row["loss"] for row in resumed[0]["history"]],
                                  [row["loss"] for row in full[0]["history"]])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda_equals_uninterrupted_run(tmp_path):
    """The state of a CUDA run is loaded back (the old loader moved its RNG states to the GPU,
    which set_state refuses) and the resumed run ends with the uninterrupted run's weights.
    The 2-D MLP in fp32: its kernels (cuBLAS matmuls, reductions) are deterministic on one
    stream, so equality is exact; the U-Net's upsampling backward uses atomics."""
    cuda = torch.device("cuda")
    points = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    meta = {"dataset": "swissroll", "kind": "vector", "shape": [2], "num_levels": None}
    p = lambda steps: Params.from_dict({"dataset": "swissroll", "timesteps": 20, "train": {
        "steps": steps, "batch_size": 16, "precision": "fp32", "log_every": 3, "checkpoint_every": 3}})
    full = train(p(12), points, meta, cuda, progress=False)
    state = tmp_path / "state.pt"
    train(p(6), points, meta, cuda, state_path=state, progress=False)  # stops mid-epoch (4 batches each)
    resumed = train(p(12), points, meta, cuda, state_path=state, progress=False)
    assert resumed.step == 12
    assert_same_weights(resumed.model.state_dict(), full.model.state_dict())
    assert_same_weights(resumed.ema.state_dict(), full.ema.state_dict())


def test_train_stage_stores_and_logs_what_training_used_not_auto(tmp_path, monkeypatch):
    """models/model.pt and the MLflow params hold the resolved precision, device and
    channels-last; the stored config still loads against the user's params."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["timesteps"] = 20
    raw["model"].update({"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": []})
    raw["train"].update({"steps": 2, "batch_size": 8, "log_every": 1, "checkpoint_every": 2, "num_threads": 1})
    assert raw["train"]["precision"] == raw["train"]["device"] == raw["train"]["channels_last"] == "auto"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    assert prepare.main(["--params", str(path), "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "prep")]) == 0
    assert train_stage.main(["--params", str(path), "--data", str(tmp_path / "prep"), "--out", str(tmp_path / "models"),
                             "--state", str(tmp_path / "state.pt"), "--reports", str(tmp_path / "rep")]) == 0

    user = Params.from_dict(raw)
    device = resolve_device("auto")
    model = load_checkpoint(tmp_path / "models" / "model.pt")
    stored = model["params"]["train"]
    expected_precision = precision_name(training_precision(user, model["meta"], device))
    assert (stored["precision"], stored["device"], stored["channels_last"]) == (expected_precision, str(device), False)
    assert load_trained(tmp_path / "models" / "model.pt", user, CPU).params.train.precision == expected_precision

    logged = mlflow.MlflowClient().get_run(model["mlflow_run_id"]).data.params
    assert (logged["train.precision"], logged["train.device"], logged["train.channels_last"]) == (
        expected_precision, str(device), "False")


def test_train_stage_names_its_own_module_for_torchrun(tmp_path, monkeypatch):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["nproc"] = 2
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert prepare.main(["--params", str(path), "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "prep")]) == 0
    calls = []
    monkeypatch.setattr(train_stage, "launch_torchrun", lambda *args, **kwargs: calls.append((args, kwargs)))
    argv = ["--params", str(path), "--data", str(tmp_path / "prep")]
    assert train_stage.main(argv) == 0
    assert calls == [((2, argv), {"module": "stages.train"})]
