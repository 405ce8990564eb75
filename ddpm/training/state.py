"""The resumable training state: what is saved every ``train.checkpoint_every`` steps and
when a resumed run may continue it.

Every random draw of the training loop is derived from the run's seed and the step
(``ddpm.seeding``), the same on every rank, so the state holds no generator states and no
per-rank batch lists: the step fixes the epoch, the position in it, the noise and the
dropout masks. What is saved is the step, the weights, the EMA, the optimizer, scheduler and
scaler, and the logged history; all of it is loaded on the CPU and moved by
``load_state_dict`` to wherever the parameters live.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpm.config import Params, changes_training
from ddpm.errors import CheckpointError
from ddpm.io import files_digest
from ddpm.pipeline.checkpoint import load_checkpoint, save_checkpoint
from ddpm.pipeline.runtime import DistInfo, print0

# The stage that drives training, beside the package in this repository: its code is part
# of what a state was trained by.
TRAIN_STAGE = Path("stages") / "train.py"


@dataclass
class TrainingState:
    """Everything a training step changes, plus how far the run has come."""

    model: nn.Module                                # the raw (unwrapped) network
    ema: nn.Module                                  # its exponential moving average
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # one row per log interval
    curve: list[dict[str, float]] = field(default_factory=list)    # the bound's learning curve: step + estimate
    run_id: str | None = None       # the tracking run this training logs to: a resumed run continues it


@dataclass(frozen=True)
class RunIdentity:
    """What a saved state must share with this run to be continued by it."""

    fingerprint: dict[str, Any]    # training_fingerprint(params)
    precision: str                 # the resolved autocast precision: fp32, bf16, fp16
    device_type: str               # cpu, cuda, ...
    world_size: int


def training_fingerprint(params: Params) -> dict[str, Any]:
    """The flattened params that determine the training trajectory: every key whose role
    (``ddpm.config.KEY_ROLES``) is network or training, and any key the table does not name;
    and ``train.steps`` when the learning rate decays to 0 at it (a cosine schedule): then a
    run of other length took other steps from the first one on."""
    flat = params.flatten()
    return {k: v for k, v in flat.items()
            if changes_training(k) or (k == "train.steps" and flat["train.lr_schedule"] != "constant")}


@functools.lru_cache(maxsize=4)
def code_fingerprint(root: Path | None = None) -> str:
    """SHA-256 of the code that trains: the ddpm package's source files and the train stage
    (``root``: the directory holding ``ddpm/`` and ``stages/``, by default this package's
    parent; a stage that is not there, as for an installed package, is left out). A training
    state saved by other code is not resumed: when the code changes, ``dvc repro`` reruns the
    train stage, which must train anew rather than pick up the finished state of the old
    code's run."""
    root = Path(__file__).resolve().parents[2] if root is None else root
    files = [*(root / "ddpm").rglob("*.py"), *[p for p in [root / TRAIN_STAGE] if p.is_file()]]
    return files_digest(root, files)


def save_training_state(path: str | os.PathLike, state: TrainingState, identity: RunIdentity) -> None:
    """Write ``state`` atomically, with what a later run checks before continuing it."""
    save_checkpoint(path, {
        "fingerprint": identity.fingerprint, "code": code_fingerprint(), "precision": identity.precision,
        "device_type": identity.device_type, "world_size": identity.world_size,
        "step": state.step, "history": state.history, "curve": state.curve, "run_id": state.run_id,
        "model": state.model.state_dict(), "ema": state.ema.state_dict(),
        "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
    })


def restore_training_state(path: str | os.PathLike, state: TrainingState, identity: RunIdentity,
                           steps: int) -> bool:
    """Load the state saved in ``path`` into ``state`` if this run can continue it (True).

    A state from other params, other code, another precision or number of processes, or
    beyond ``steps`` is ignored with one line saying why (training starts at step 0). A state
    saved on another kind of device raises ``CheckpointError``: continuing it here would not
    be the same run, and starting anew would overwrite the other device's progress.
    """
    saved = load_checkpoint(path, map_location="cpu")
    why_not = _why_not_resume(saved, identity)
    if why_not is None:
        _check_same_device(path, saved, identity)
        why_not = _why_not_continue(saved, identity, steps)
    if why_not is not None:
        print0(f"ignoring the saved training state in {path}: {why_not}; training starts at step 0")
        return False
    state.model.load_state_dict(saved["model"])
    state.ema.load_state_dict(saved["ema"])
    state.optimizer.load_state_dict(saved["optimizer"])  # moves its tensors to the parameters' device
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    state.step, state.history, state.curve = saved["step"], saved["history"], saved["curve"]
    state.run_id = saved.get("run_id")
    print0(f"resuming training from step {state.step} ({path})")
    return True


def _why_not_resume(saved: dict[str, Any], identity: RunIdentity) -> str | None:
    """Why ``saved`` belongs to another run (other params or code), or None."""
    if saved.get("fingerprint") != identity.fingerprint:
        old, new = saved.get("fingerprint") or {}, identity.fingerprint
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:5])
        return f"it was saved with other params ({shown}{', ...' if len(keys) > 5 else ''})"
    if saved.get("code") != code_fingerprint():
        return (f"it was saved by other training code (the ddpm package's or {TRAIN_STAGE.as_posix()}'s source "
                "has changed since)")
    return None


def _check_same_device(path: str | os.PathLike, saved: dict[str, Any], identity: RunIdentity) -> None:
    if saved.get("device_type") != identity.device_type:
        raise CheckpointError(
            f"the training state {str(path)!r} was saved on {saved.get('device_type')} and this run trains on "
            f"{identity.device_type}; a run continues only on the kind of device it started on (other kernels "
            f"and random streams): set train.device to {saved.get('device_type')} to continue it, or delete the "
            f"file to start anew")


def _why_not_continue(saved: dict[str, Any], identity: RunIdentity, steps: int) -> str | None:
    """Why this run's setup cannot continue ``saved`` exactly, or None."""
    if saved.get("precision") != identity.precision:
        return f"it was trained in {saved.get('precision')}, and train.precision resolves to {identity.precision} here"
    if saved.get("world_size") != identity.world_size:
        return f"it was saved by {saved.get('world_size')} processes, and this run has {identity.world_size}"
    if saved["step"] > steps:
        return f"it is at step {saved['step']}, beyond train.steps={steps}"
    return None


def run_identity(params: Params, precision: str, device: torch.device, dist: DistInfo) -> RunIdentity:
    return RunIdentity(training_fingerprint(params), precision, device.type, dist.world_size)
