"""The training loop: Adam with linear warmup, gradient clipping, EMA weights, autocast,
DDP under torchrun, periodic resumable checkpoints, and a callback for logging.

One flat loop (EDM's training_loop shape). It writes nothing but the resumable
checkpoint; the train stage writes the final model and the reports. Everything that
makes a run reproducible (data order, diffusion noise, dropout) comes from generators
whose states are saved, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ddpm.checkpoint import load_checkpoint, save_checkpoint
from ddpm.config import Params
from ddpm.data import to_model_space
from ddpm.errors import TrainingDiverged
from ddpm.factory import build_diffusion, build_network
from ddpm.runtime import (DistInfo, autocast, flush_denormals, precision_name, print0, resolve_precision,
                          set_tf32)

LogCallback = Callable[[int, dict[str, float]], None]
# Sections whose values change what training computes; a saved training state is only
# resumed when they are all unchanged.
_TRAINING_SECTIONS = ("dataset", "seed", "beta_schedule", "timesteps", "beta_start", "beta_end",
                      "mean_type", "var_type", "loss_type", "data.", "model.", "train.")
# Keys that change how fast, not what, training computes (on the same device), and
# train.steps, since the schedule does not depend on it: a longer run continues a shorter one.
_NOT_TRAINING = ("train.steps", "train.log_every", "train.checkpoint_every", "train.device", "train.num_threads",
                 "train.compile", "train.nproc")


@dataclass
class TrainResult:
    model: nn.Module                 # the raw (unwrapped) network
    ema: nn.Module                   # its exponential moving average
    step: int
    history: list[dict[str, float]] = field(default_factory=list)  # one row per log interval


def training_fingerprint(params: Params) -> dict[str, Any]:
    """The flattened params that determine the training trajectory."""
    return {k: v for k, v in params.flatten().items()
            if k.startswith(_TRAINING_SECTIONS) and k not in _NOT_TRAINING}


@functools.lru_cache(maxsize=4)
def code_fingerprint(root: Path = Path(__file__).resolve().parent) -> str:
    """SHA-256 of the ddpm package's source files (``root``: the package directory). A training
    state saved by other code is not resumed: when the code changes, ``dvc repro`` reruns the
    train stage, which must train anew rather than pick up the finished state of the old code's
    run."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _why_not_resume(state: dict[str, Any], fingerprint: dict[str, Any], precision: str, dist: DistInfo,
                    steps: int) -> str | None:
    """Why a saved training state cannot be continued by this run, or None if it can."""
    if state.get("fingerprint") != fingerprint:
        saved = state.get("fingerprint") or {}
        keys = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {fingerprint.get(k)!r}" for k in keys[:5])
        return f"it was saved with other params ({shown}{', ...' if len(keys) > 5 else ''})"
    if state.get("code") != code_fingerprint():
        return "it was saved by other ddpm code (the package's source has changed since)"
    if state.get("precision") != precision:
        return f"it was trained in {state.get('precision')}, and train.precision resolves to {precision} here"
    if state.get("world_size") != dist.world_size:
        return f"it was saved by {state.get('world_size')} processes, and this run has {dist.world_size}"
    if state["step"] > steps:
        return f"it is at step {state['step']}, beyond train.steps={steps}"
    return None


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def _batches_for_rank(perm: torch.Tensor, batch_size: int, dist: DistInfo) -> list[torch.Tensor]:
    """Split one epoch's permutation into global batches and keep this rank's share.

    Rank r takes examples r, r + W, r + 2W, ... of every global batch, so the ranks
    together see exactly the global batch a single process would.
    """
    n_full = perm.shape[0] // batch_size
    batches = perm[: n_full * batch_size].reshape(n_full, batch_size)
    return [b[dist.rank :: dist.world_size] for b in batches]


def check_batch_size(params: Params, num_train: int, dist: DistInfo = DistInfo()) -> None:
    """The global batch must fit the training set and split evenly over the ranks."""
    batch = params.train.batch_size
    if batch > num_train:
        raise ValueError(f"train.batch_size={batch} is larger than the training set "
                         f"({num_train} examples); accepted: 1..{num_train}")
    if batch % dist.world_size:
        raise ValueError(f"train.batch_size={batch} must be divisible by the number of processes "
                         f"({dist.world_size})")


def training_precision(params: Params, meta: dict[str, Any], device: torch.device) -> torch.dtype:
    """The autocast dtype the network trains under (``train.precision``, ``auto`` resolved)."""
    return resolve_precision(params.train.precision, device, "unet" if meta["kind"] == "image" else "mlp")


def train(params: Params, train_levels: np.ndarray, meta: dict[str, Any], device: torch.device,
          dist: DistInfo = DistInfo(), state_path: str | Path | None = None,
          on_log: LogCallback | None = None, progress: bool = True) -> TrainResult:
    """Train the network of ``params`` on ``train_levels`` (grey levels or vectors).

    ``state_path``: where the resumable training state is saved every
    ``train.checkpoint_every`` steps; if it already holds a state from the same training
    config, training resumes from it.
    """
    tc = params.train
    check_batch_size(params, len(train_levels), dist)
    diffusion = build_diffusion(params)
    num_levels = meta["num_levels"] if meta["kind"] == "image" else None
    amp_dtype = training_precision(params, meta, device)

    # Data lives on the device; images as their grey levels, scaled per batch.
    data = torch.as_tensor(train_levels).to(device)
    if num_levels is not None:
        lut = torch.as_tensor(to_model_space(np.arange(num_levels), num_levels), device=device)
        to_x = lambda v: lut[v.long()]
    else:
        to_x = lambda v: v.float()

    # The initial weights come from the seed (identical on every rank; DDP also broadcasts them).
    torch.manual_seed(params.seed)
    model = build_network(params, meta).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    # The fused Adam kernel exists for CUDA and the CPU (3x faster than the loop on the CPU).
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, fused=device.type in ("cuda", "cpu"))
    warmup = max(tc.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    # The data order, timesteps, noise and flips are drawn for the whole global batch from
    # generators seeded identically on every rank, and each rank keeps its share: so N
    # processes compute exactly what one process computes on the same global batch.
    # Dropout, the only per-rank randomness, is seeded per rank from the global seed.
    data_gen = torch.Generator().manual_seed(params.seed)
    noise_gen = torch.Generator(device=device).manual_seed(params.seed * 1_000_003 + 7919)
    torch.manual_seed(params.seed + 1 + dist.rank)  # dropout
    step, history, epoch_batches = 0, [], []
    fingerprint = training_fingerprint(params)

    precision = precision_name(amp_dtype)
    if state_path is not None and Path(state_path).exists():
        state = load_checkpoint(state_path, map_location=device)
        why_not = _why_not_resume(state, fingerprint, precision, dist, tc.steps)
        if why_not is None:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            data_gen.set_state(state["data_gen"])
            noise_gen.set_state(state["noise_gen"].to(noise_gen.get_state().device))
            torch.set_rng_state(state["cpu_rng"])
            if device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            step, history = state["step"], state["history"]
            epoch_batches = [b for b in state["epoch_batches"]]
            print0(f"resuming training from step {step} ({state_path})")
        else:
            print0(f"ignoring the saved training state in {state_path}: {why_not}; training starts at step 0")

    images = num_levels is not None
    # auto = off: measured on an H200, channels-last made the CIFAR-10 U-Net's bf16 step 23% slower
    # (layout copies around GroupNorm); on the CPU it gained nothing.
    channels_last = bool(tc.channels_last is True and images)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    set_tf32(tc.tf32)  # training only (nanoGPT); evaluation keeps full float32 (EDM)
    net: nn.Module = model
    if dist.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        net = torch.compile(net)

    def save_state() -> None:
        if state_path is None or not dist.is_main:
            return
        state = {
            "fingerprint": fingerprint, "code": code_fingerprint(), "precision": precision,
            "world_size": dist.world_size, "step": step, "history": history,
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "data_gen": data_gen.get_state(), "noise_gen": noise_gen.get_state().cpu(),
            "cpu_rng": torch.get_rng_state(), "epoch_batches": epoch_batches,
        }
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        save_checkpoint(state_path, state)

    def diverged(what: str) -> None:
        if bar is not None:
            bar.close()
        raise TrainingDiverged(f"{what} in the steps up to {step}; nothing from them was logged or saved, "
                               f"and the last good checkpoint ({state_path}) was kept")

    def check_finite() -> None:
        """Before a checkpoint: the losses since the last log and the weights are finite."""
        if not bool(torch.isfinite(loss_sum).all()):
            diverged("training loss became non-finite (nan or inf)")
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            diverged("the weights became non-finite (nan or inf)")

    with flush_denormals(device):
        model.train()
        bar = None
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # sum of losses, count
        grad_norm_last = torch.zeros((), device=device)
        t_last, step_last = time.perf_counter(), step
        if progress and dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.steps, initial=step, desc="train", unit="step", dynamic_ncols=True, mininterval=2.0)
        while step < tc.steps:
            if not epoch_batches:
                perm = torch.randperm(len(data), generator=data_gen)
                epoch_batches = _batches_for_rank(perm, tc.batch_size, dist)
            idx = epoch_batches.pop(0).to(device)
            x0 = to_x(data[idx])
            global_shape = (tc.batch_size, *x0.shape[1:])
            mine = slice(dist.rank, None, dist.world_size)
            t = torch.randint(0, diffusion.num_timesteps, (tc.batch_size,), device=device, generator=noise_gen)[mine]
            noise = torch.randn(global_shape, device=device, generator=noise_gen)[mine]
            if channels_last:
                x0 = x0.contiguous(memory_format=memory_format)
            if tc.hflip and x0.ndim == 4:
                flip = (torch.rand(tc.batch_size, device=device, generator=noise_gen) < 0.5)[mine]
                x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)

            with autocast(device, amp_dtype):
                losses = diffusion.training_losses(net, x0, t=t, noise=noise, num_levels=num_levels)
            loss = losses["loss"].mean()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if tc.grad_clip > 0:
                grad_norm_last = nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            update_ema(ema, model, tc.ema_decay)
            step += 1
            loss_sum += torch.stack([losses["loss"].detach().sum().double(),
                                     torch.tensor(float(x0.shape[0]), dtype=torch.float64, device=device)])
            if bar is not None:
                bar.update(1)

            if step % tc.log_every == 0 or step == tc.steps:
                totals = loss_sum.clone()
                if dist.distributed:
                    torch.distributed.all_reduce(totals)  # sums and counts, not means of means
                mean_loss = (totals[0] / totals[1]).item()
                if not math.isfinite(mean_loss):
                    diverged(f"training loss became {mean_loss}")
                elapsed = time.perf_counter() - t_last
                row = {"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm_last), "images_per_s": (step - step_last) * tc.batch_size / elapsed}
                history.append(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                if on_log is not None and dist.is_main:
                    on_log(step, {k: v for k, v in row.items() if k != "step"})
                loss_sum.zero_()
                t_last, step_last = time.perf_counter(), step
            if step % tc.checkpoint_every == 0 and step < tc.steps:
                check_finite()
                save_state()
        if bar is not None:
            bar.close()
        check_finite()
        save_state()
    return TrainResult(model=model, ema=ema, step=step, history=history)
