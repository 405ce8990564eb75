"""The training loop: resuming equals not stopping, DDP equals one process on the same
global batch, divergence stops with the step, EMA and warmup do what they say."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.config import Params
from ddpm.errors import ConfigError, TrainingDiverged
from ddpm.pipeline.runtime import DistInfo
from ddpm.training import loop as training
from ddpm.training import state as train_state
from ddpm.training.loop import train, update_ema

SMALL = {
    "timesteps": 50,
    "model": {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4],
              "dropout": 0.0},
    "train": {"steps": 12, "batch_size": 16, "warmup_steps": 3, "log_every": 4, "checkpoint_every": 4,
              "ema_decay": 0.9},
}


def digits_meta() -> dict:
    return {"dataset": "digits", "kind": "image", "shape": [1, 8, 8], "num_levels": 17}


def levels(n=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 17, size=(n, 1, 8, 8), dtype=np.uint8)


def params(model: dict | None = None, **train) -> Params:
    raw = {**SMALL, "model": {**SMALL["model"], **(model or {})}, "train": {**SMALL["train"], **train}}
    return Params.from_dict(raw)


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


# One torch thread and a forked RNG for every test here (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    data = levels()
    full = train(params(), data, digits_meta(), torch.device("cpu"), progress=False)

    state = tmp_path / "state.pt"

    def interrupt(step, metrics):
        if step == 8:  # after the checkpoint at step 8 ... and before the run ends
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(params(log_every=2), data, digits_meta(), torch.device("cpu"), state_path=state, on_log=interrupt,
              progress=False)
    assert state.exists()
    resumed = train(params(log_every=2), data, digits_meta(), torch.device("cpu"), state_path=state, progress=False)
    assert resumed.step == 12
    assert_same_weights(resumed.model.state_dict(), full.model.state_dict())
    assert_same_weights(resumed.ema.state_dict(), full.ema.state_dict())


def test_a_longer_run_continues_a_shorter_one(tmp_path):
    data = levels()
    full = train(params(), data, digits_meta(), torch.device("cpu"), progress=False)
    state = tmp_path / "state.pt"
    short = train(params(steps=6), data, digits_meta(), torch.device("cpu"), state_path=state, progress=False)
    assert short.step == 6
    longer = train(params(), data, digits_meta(), torch.device("cpu"), state_path=state, progress=False)
    assert_same_weights(longer.model.state_dict(), full.model.state_dict())
    # The short run logged its last, partial interval at step 6; the history continues from it.
    assert [r["step"] for r in longer.history] == [4, 6, 8, 12]


def test_state_from_another_config_is_not_resumed(tmp_path, capsys):
    data = levels()
    state = tmp_path / "state.pt"
    train(params(), data, digits_meta(), torch.device("cpu"), state_path=state, progress=False)
    other = train(params(lr=5e-4), data, digits_meta(), torch.device("cpu"), state_path=state, progress=False)
    assert "it was saved with other params (train.lr: 0.001 -> 0.0005)" in capsys.readouterr().err
    fresh = train(params(lr=5e-4), data, digits_meta(), torch.device("cpu"), progress=False)
    assert_same_weights(other.model.state_dict(), fresh.model.state_dict())


def test_state_saved_by_other_code_is_not_resumed(tmp_path, capsys, monkeypatch):
    # dvc repro reruns train when the ddpm code changes: the finished state of the old code's run
    # must not be taken for the new run's result.
    data = levels()
    state = tmp_path / "state.pt"
    train(params(), data, digits_meta(), torch.device("cpu"), state_path=state, progress=False)
    monkeypatch.setattr(train_state, "code_fingerprint", lambda: "0" * 64)
    rerun = train(params(), data, digits_meta(), torch.device("cpu"), state_path=state, progress=False)
    assert "it was saved by other training code" in capsys.readouterr().err
    assert [r["step"] for r in rerun.history] == [4, 8, 12]  # trained from step 0, not resumed at 12


def test_code_fingerprint_changes_with_any_source_file_of_the_package(tmp_path):
    package = Path(training.__file__).resolve().parents[1]  # ddpm/, from ddpm/training/loop.py
    copy = tmp_path / "copy"
    shutil.copytree(package, copy / "ddpm", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "stages").mkdir()
    shutil.copy(package.parent / "stages" / "train.py", copy / "stages" / "train.py")
    assert training.code_fingerprint(copy) == training.code_fingerprint()
    edited = tmp_path / "edited"
    shutil.copytree(copy, edited)
    (edited / "ddpm" / "nn" / "unet.py").write_text((copy / "ddpm" / "nn" / "unet.py").read_text() + "\n")
    added = tmp_path / "added"
    shutil.copytree(copy, added)
    (added / "ddpm" / "extra.py").write_text("")
    fingerprints = {training.code_fingerprint(d) for d in (copy, edited, added)}
    assert len(fingerprints) == 3


def test_same_seed_same_weights_other_seed_differs():
    data = levels()
    a = train(params(steps=4), data, digits_meta(), torch.device("cpu"), progress=False)
    b = train(params(steps=4), data, digits_meta(), torch.device("cpu"), progress=False)
    assert_same_weights(a.model.state_dict(), b.model.state_dict())
    c = train(Params.from_dict({**SMALL, "seed": 1, "train": {**SMALL["train"], "steps": 4}}), data, digits_meta(),
              torch.device("cpu"), progress=False)
    assert not torch.equal(a.model.state_dict()["out.2.weight"], c.model.state_dict()["out.2.weight"])


@pytest.mark.parametrize("precision, atol, loss_rtol", [
    # fp32: the DDP check proper; what is left is float rounding of the per-rank partial sums.
    ("fp32", 1e-5, 1e-5),
    # bf16 autocast (``auto`` on CPUs with bf16 units): a rank's half batch runs other oneDNN
    # kernels than the full batch, so the forward rounds differently at bf16's 8 bits and
    # Adam's normalised steps (lr 1e-3) carry that into the weights: measured 2.6e-4 after
    # 12 steps. The ranks must still agree exactly.
    ("bf16", 2e-3, 1e-2),
])
def test_ddp_two_processes_equal_one_process_on_the_global_batch(tmp_path, precision, atol, loss_rtol):
    data = levels()
    np.save(tmp_path / "levels.npy", data)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(Path(__file__).parent / "_ddp_worker.py"), str(tmp_path), precision],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert_same_weights(rank0["model"], rank1["model"])
    single = train(params(precision=precision), data, digits_meta(), torch.device("cpu"), progress=False)
    assert_same_weights(rank0["model"], single.model.state_dict(), atol=atol)
    # Logged losses are reduced as sums and counts over ranks: the single process's values.
    np.testing.assert_allclose([r["loss"] for r in rank0["history"]], [r["loss"] for r in single.history],
                               rtol=loss_rtol)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    points = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    points[5] = np.nan
    meta = {"dataset": "swissroll", "kind": "vector", "shape": [2], "num_levels": None}
    p = Params.from_dict({"dataset": "swissroll", "timesteps": 20,
                          "train": {"steps": 40, "batch_size": 64, "log_every": 4, "checkpoint_every": 2}})
    state = tmp_path / "state.pt"
    logged = []
    with pytest.raises(TrainingDiverged) as err:
        train(p, points, meta, torch.device("cpu"), state_path=state, on_log=lambda s, m: logged.append(m),
              progress=False)
    # The NaN in the first batch is caught at the first checkpoint (step 2), before saving.
    assert "steps up to 2" in str(err.value) and "nan" in str(err.value)
    assert logged == []  # nothing non-finite reached the tracker
    assert not state.exists()


def test_divergence_after_good_checkpoints_keeps_the_last_good_one(tmp_path):
    """One NaN point among 64, batches of 8: the first batches are finite and checkpointed
    every step; the batch holding the NaN stops training without saving."""
    points = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    points[37] = np.nan
    meta = {"dataset": "swissroll", "kind": "vector", "shape": [2], "num_levels": None}
    p = Params.from_dict({"dataset": "swissroll", "timesteps": 20,
                          "train": {"steps": 40, "batch_size": 8, "log_every": 100, "checkpoint_every": 1}})
    state = tmp_path / "state.pt"
    with pytest.raises(TrainingDiverged) as err:
        train(p, points, meta, torch.device("cpu"), state_path=state, progress=False)
    failed_at = int(str(err.value).split("steps up to ")[1].split(";")[0])
    saved = torch.load(state, weights_only=True)
    assert 1 <= saved["step"] == failed_at - 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


def test_batch_size_the_data_or_the_ranks_cannot_take_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train.batch_size=16 is larger than the training set \(8 examples\); "
                                          r"accepted: 1..8"):
        training.check_batch_size(params(), 8)
    with pytest.raises(ConfigError, match=r"train.batch_size=16 must be divisible by the number of processes \(3\)"):
        training.check_batch_size(params(), 64, DistInfo(rank=0, local_rank=0, world_size=3))


def test_ema_update_is_the_exponential_moving_average():
    model = torch.nn.Linear(3, 2)
    ema = torch.nn.Linear(3, 2)
    ema.load_state_dict(model.state_dict())
    before = ema.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    update_ema(ema, model, 0.9)
    torch.testing.assert_close(ema.weight, 0.9 * before + 0.1 * model.weight)


def test_bound_probe_runs_every_bound_every_steps_on_the_ema_and_leaves_training_unchanged():
    """The learning curve's probe sees the EMA network at steps 4, 8 and the last (10), its
    metrics reach on_log and the result's curve, and training computes the same weights as
    without it (the probe draws from its own streams)."""
    data = levels()
    seen, logged = [], []

    def probe(network):
        seen.append({k: v.clone() for k, v in network.state_dict().items()})
        return {"bpd_estimate": float(len(seen))}

    p = params(steps=10, bound_every=4)
    with_probe = train(p, data, digits_meta(), torch.device("cpu"), progress=False, probe=probe,
                       on_log=lambda step, m: logged.append((step, m)))
    without = train(p, data, digits_meta(), torch.device("cpu"), progress=False)
    assert [row["step"] for row in with_probe.curve] == [4, 8, 10]
    assert [row["bpd_estimate"] for row in with_probe.curve] == [1.0, 2.0, 3.0]
    assert [(s, m) for s, m in logged if "bpd_estimate" in m] == [(4, {"bpd_estimate": 1.0}),
                                                                  (8, {"bpd_estimate": 2.0}),
                                                                  (10, {"bpd_estimate": 3.0})]
    assert_same_weights(seen[-1], with_probe.ema.state_dict())
    assert_same_weights(with_probe.model.state_dict(), without.model.state_dict())
    assert without.curve == []


def test_resumed_run_keeps_the_learning_curve_of_its_first_part(tmp_path):
    data, state = levels(), tmp_path / "state.pt"
    probe = lambda network: {"bpd_estimate": float(sum(p.double().sum() for p in network.parameters()))}
    first = train(params(steps=8, bound_every=4), data, digits_meta(), torch.device("cpu"), state_path=state,
                  progress=False, probe=probe)
    resumed = train(params(steps=12, bound_every=4), data, digits_meta(), torch.device("cpu"), state_path=state,
                    progress=False, probe=probe)
    whole = train(params(steps=12, bound_every=4), data, digits_meta(), torch.device("cpu"), progress=False,
                  probe=probe)
    assert [r["step"] for r in first.curve] == [4, 8]
    assert resumed.curve == whole.curve and [r["step"] for r in whole.curve] == [4, 8, 12]


def test_ema_decay_warms_up_and_the_initial_networks_weight_is_the_product_of_decays():
    assert [training.ema_decay_at(0.9999, s) for s in (0, 1, 89990)] == [0.1, 2 / 11, 0.9999]
    assert training.ema_decay_at(0.995, 10_000) == 0.995
    for decay, steps in ((0.9999, 4690), (0.995, 3000), (0.9, 7), (0.5, 1)):
        brute = math.prod(min(decay, (1 + s) / (10 + s)) for s in range(steps))
        assert training.ema_initial_weight(decay, steps) == pytest.approx(brute, rel=1e-12, abs=0)
    # While the warm-up lasts the product telescopes: 9! N! / (N + 9)!.
    assert training.ema_initial_weight(0.9999, 40) == pytest.approx(
        math.factorial(9) * math.factorial(40) / math.factorial(49), rel=1e-12)
    assert training.ema_initial_weight(0.9, 0) == 1.0


def test_ema_after_one_step_is_the_warmed_up_average_of_the_initial_and_trained_weights():
    p = params(steps=1)
    initial = training.setup_training(p, digits_meta(), torch.device("cpu")).state.model.state_dict()
    result = train(p, levels(), digits_meta(), torch.device("cpu"), progress=False)
    decay = training.ema_decay_at(p.train.ema_decay, 0)  # 0.1: the first step keeps a tenth of the start
    for name, w in result.ema.named_parameters():
        expected = decay * initial[name] + (1 - decay) * result.model.state_dict()[name]
        torch.testing.assert_close(w, expected, rtol=0, atol=1e-6)  # float32 lerp of O(1) weights


def test_mnist_shufflenet_recipes_average_is_not_mostly_the_initial_network_after_a_short_run(capsys):
    """EMA 0.9999 without warm-up keeps 0.9999^N of the initial network: after this 6-step run
    the average would sit 0.06% of the way to the trained weights (63% initial after the
    recipe's 4690 steps). Warmed up, it follows the trained weights."""
    p = Params.from_dict({"recipe": "mnist_shufflenet", "model": {"base_channels": 16},
                          "train": {"steps": 6, "batch_size": 8, "bound_every": 0, "log_every": 3}})
    assert p.train.ema_decay == 0.9999 and p.model.name == "shufflenet_unet"
    meta = {"dataset": "mnist", "kind": "image", "shape": [1, 28, 28], "num_levels": 256}
    data = np.random.default_rng(0).integers(0, 256, size=(16, 1, 28, 28), dtype=np.uint8)
    initial = training.setup_training(p, meta, torch.device("cpu")).state.model.state_dict()
    result = train(p, data, meta, torch.device("cpu"), progress=False)
    trained = result.model.state_dict()
    moved = sum(float((w - initial[n]).square().sum()) for n, w in result.ema.state_dict().items()
                if w.is_floating_point()) ** 0.5
    trained_moved = sum(float((trained[n] - initial[n]).square().sum()) for n in trained
                        if trained[n].is_floating_point()) ** 0.5
    assert moved > 0.5 * trained_moved  # plain 0.9999: about 0.0006 of it
    assert training.ema_initial_weight(p.train.ema_decay, 4690) < 1e-20  # 0.63 without the warm-up
    assert "still hold" not in capsys.readouterr().err


def test_a_run_whose_average_is_still_mostly_initial_says_so(capsys):
    train(params(steps=1), levels(), digits_meta(), torch.device("cpu"), progress=False)
    assert "the averaged weights (train.ema_decay=0.9) still hold 10% of the initial network after 1 steps" in (
        capsys.readouterr().err)


def test_a_batch_size_still_auto_is_refused_with_what_resolves_it():
    with pytest.raises(ConfigError, match=r"train.batch_size is auto: .*data_resolved_params"):
        training.check_batch_size(Params.from_dict({}), 64)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_learning_rate_of_every_step_is_the_schedules(schedule):
    """Each logged lr (the rate of the next step) against the closed form: the linear warmup over
    3 steps, then 1 (constant) or 0.5 (1 + cos(pi s / 12)), which reaches 0 at the last step."""
    result = train(params(lr_schedule=schedule, log_every=1, lr=1e-2), levels(), digits_meta(), torch.device("cpu"),
                   progress=False)

    def closed_form(s: int) -> float:
        ramp = min(1.0, (s + 1) / 3)
        return 1e-2 * ramp * (1.0 if schedule == "constant" else 0.5 * (1 + math.cos(math.pi * s / 12)))

    assert [row["step"] for row in result.history] == list(range(1, 13))
    assert [row["lr"] for row in result.history] == pytest.approx([closed_form(s) for s in range(1, 13)],
                                                                   rel=1e-12, abs=1e-18)
    assert (result.history[-1]["lr"] == 0.0) is (schedule == "cosine")
