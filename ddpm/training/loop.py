"""The training loop: Adam with linear warmup, gradient clipping, EMA weights, autocast,
DDP under torchrun, periodic resumable checkpoints, and a callback for logging.

One flat loop (nanoGPT's train.py, EDM's training_loop.py) around :func:`train_step`, one
optimizer step on one batch, which the benchmarks time as it is. It writes nothing but the
resumable state (``ddpm.training.state``); the train stage writes the final model and reports.

Every random draw comes from ``ddpm.seeding`` and depends only on the seed and the step: the
epoch's permutation (stream ``data_order``, item epoch), the global batch's timesteps, noise
and flips (``train_noise``, item step, drawn for the whole global batch on every rank, each
rank keeping its share) and the dropout masks (``dropout``, item step, keyed by rank). So N
processes compute what one process computes on the same global batch, and a resumed run
continues exactly where it stopped from the step alone.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ddpm import seeding
from ddpm.config import AUTO, Params
from ddpm.data import to_model_space
from ddpm.errors import ConfigError, TrainingDiverged
from ddpm.pipeline.build import build_network, build_objective
from ddpm.pipeline.runtime import (
    DistInfo,
    autocast,
    flush_denormals,
    precision_name,
    print0,
    resolve_precision,
    set_tf32,
)
from ddpm.training.objectives import Objective
from ddpm.training.state import (
    RunIdentity,
    TrainingState,
    code_fingerprint,
    restore_training_state,
    run_identity,
    save_training_state,
    training_fingerprint,
)

__all__ = ["LogCallback", "Probe", "TrainResult", "Trainer", "batch_draws", "check_batch_size", "code_fingerprint",
           "ema_decay_at", "ema_initial_weight", "epoch_order", "rank_batch", "resolved_params", "seed_dropout",
           "setup_training", "train", "train_step", "training_fingerprint", "training_precision", "update_ema",
           "uses_channels_last"]

LogCallback = Callable[[int, dict[str, float]], None]
# Scores the EMA network during training (the bound's learning curve): metrics by name.
Probe = Callable[[nn.Module], dict[str, float]]
ONE_PROCESS = DistInfo()  # plain ``python``: rank 0 of 1


@dataclass
class TrainResult:
    model: nn.Module                 # the raw (unwrapped) network
    ema: nn.Module                   # its exponential moving average
    step: int
    history: list[dict[str, float]] = field(default_factory=list)  # one row per log interval
    curve: list[dict[str, float]] = field(default_factory=list)    # the probe's rows: step + metrics
    start_step: int = 0              # where this call started: 0, or the step of the state it resumed


@dataclass
class Trainer:
    """What :func:`train_step` needs, built once by :func:`setup_training`."""

    objective: Objective             # the family's loss (ddpm.pipeline.build.build_objective)
    state: TrainingState             # model, EMA, optimizer, scheduler, scaler, step, history
    net: nn.Module                   # the model as the step calls it: DDP-wrapped and compiled as configured
    amp_dtype: torch.dtype           # autocast dtype of the network's forward
    channels_last: bool              # images in channels-last memory layout
    grad_clip: float                 # max global gradient norm; 0: no clipping
    ema_decay: float


# The average warms up as diffusers' EMAModel and ema-pytorch do: decay min(decay, (1 + s) / (10 + s))
# at step s. A plain 0.9999 keeps 0.9999^N of the initial network after N steps: 63% after the
# 4690 steps of the mnist_shufflenet recipe. Warmed up, the initial network keeps 9! N! / (N + 9)!
# of its weight while the warm-up lasts (under 1e-3 after 5 steps).
EMA_WARMUP_OFFSET = 10
# A run whose average still holds more of the initial network than this says so in one line.
EMA_INITIAL_WEIGHT_NOTE = 0.05


def ema_decay_at(decay: float, step: int) -> float:
    """The EMA's decay at optimizer step ``step`` (0 for the first): ``decay`` warmed up."""
    return min(decay, (1 + step) / (EMA_WARMUP_OFFSET + step))


def ema_initial_weight(decay: float, steps: int) -> float:
    """The weight the initial network keeps in the average after ``steps`` steps: the product of
    the decays ``ema_decay_at`` (a sum of logs: 800k factors neither underflow nor drift)."""
    return math.exp(math.fsum(math.log(ema_decay_at(decay, s)) for s in range(steps)))


def lr_factor(schedule: str, warmup: int, steps: int, step: int) -> float:
    """The learning rate of optimizer step ``step`` (from 0) over ``train.lr``: a linear warmup
    over ``warmup`` steps, times 1 (``constant``, Ho et al.'s) or half a cosine from 1 at step 0
    to 0 at ``steps`` (``cosine``: Loshchilov & Hutter 2017's annealing without restarts)."""
    ramp = min(1.0, (step + 1) / warmup)
    if schedule == "constant":
        return ramp
    return ramp * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def check_batch_size(params: Params, num_train: int, dist: DistInfo = ONE_PROCESS) -> None:
    """The global batch must fit the training set and split evenly over the ranks."""
    batch = params.train.batch_size
    if batch == AUTO:  # resolved from the training split's size, as the train stage does
        raise ConfigError("train.batch_size is auto: resolve it from the training data first "
                          "(ddpm.pipeline.build.data_resolved_params caps the dataset's default at the training split)")
    if batch > num_train:
        raise ConfigError(f"train.batch_size={batch} is larger than the training set "
                          f"({num_train} examples); accepted: 1..{num_train}")
    if batch % dist.world_size:
        raise ConfigError(f"train.batch_size={batch} must be divisible by the number of processes "
                          f"({dist.world_size})")


def training_precision(params: Params, meta: dict[str, Any], device: torch.device) -> torch.dtype:
    """The autocast dtype the network trains under (``train.precision``, ``auto`` resolved)."""
    return resolve_precision(params.train.precision, device, "unet" if meta["kind"] == "image" else "mlp")


def uses_channels_last(params: Params, meta: dict[str, Any]) -> bool:
    """``train.channels_last`` resolved: ``auto`` is off, since the layout copies around
    GroupNorm cost the U-Net more than the channels-last convolutions gain
    (benchmarks/README.md)."""
    return params.train.channels_last is True and meta["kind"] == "image"


def resolved_params(params: Params, meta: dict[str, Any], device: torch.device, dist: DistInfo = ONE_PROCESS
                    ) -> Params:
    """``params`` with what training actually used in place of ``auto`` for the precision, the
    device (its type under DDP, where each rank has its own) and the memory layout: the config
    stored with the model and logged."""
    train = dataclasses.replace(params.train, precision=precision_name(training_precision(params, meta, device)),
                                device=device.type if dist.distributed else str(device),
                                channels_last=uses_channels_last(params, meta))
    return dataclasses.replace(params, train=train)


def setup_training(params: Params, meta: dict[str, Any], device: torch.device, dist: DistInfo = ONE_PROCESS
                   ) -> Trainer:
    """The network (initial weights from the seed's ``init`` stream, identical on every rank),
    its EMA, Adam with linear warmup, the fp16 grad scaler, and the network as the step calls it."""
    tc = params.train
    torch.manual_seed(seeding.stream_seed(params.seed, "init"))
    model = build_network(params, meta).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    # The fused Adam kernel exists for CUDA and the CPU (its speed against the loop: benchmarks/README.md).
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, fused=device.type in ("cuda", "cpu"))
    warmup = max(tc.warmup_steps, 1)
    # A plain function, so the scheduler's state_dict holds no lambda state (as before schedules).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(tc.lr_schedule, warmup, tc.steps, s))
    amp_dtype = training_precision(params, meta, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    channels_last = uses_channels_last(params, meta)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    set_tf32(tc.tf32)  # training only (nanoGPT); evaluation keeps full float32 (EDM)
    net: nn.Module = model
    if dist.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        net = torch.compile(net)
    num_levels = meta["num_levels"] if meta["kind"] == "image" else None  # the discrete decoder's grey levels
    return Trainer(objective=build_objective(params, num_levels),
                   state=TrainingState(model, ema, optimizer, scheduler, scaler), net=net, amp_dtype=amp_dtype,
                   channels_last=channels_last, grad_clip=tc.grad_clip, ema_decay=tc.ema_decay)


def train_step(trainer: Trainer, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step on the batch ``x0`` with timesteps ``t`` and noise ``noise``: the
    forward under autocast, the loss, backward, unscale, clip, Adam, scaler, lr schedule, EMA.

    Returns the per-example losses [B] (detached) and the gradient norm before clipping (None
    without clipping), as device tensors: nothing here waits for the device (but fp16's
    GradScaler, which reads its inf check). Advances ``trainer.state.step``.
    """
    s = trainer.state
    if trainer.channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    with autocast(x0.device, trainer.amp_dtype):
        losses = trainer.objective.training_losses(trainer.net, x0, t, noise)
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(losses["loss"].mean()).backward()
    s.scaler.unscale_(s.optimizer)
    grad_norm = None
    if trainer.grad_clip > 0:
        grad_norm = nn.utils.clip_grad_norm_(s.model.parameters(), trainer.grad_clip)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.scheduler.step()
    update_ema(s.ema, s.model, ema_decay_at(trainer.ema_decay, s.step))
    s.step += 1
    return losses["loss"].detach(), grad_norm


def epoch_order(seed: int, epoch: int, num_examples: int) -> torch.Tensor:
    """The permutation of the training set in ``epoch`` (on the CPU, the same on every rank)."""
    return torch.randperm(num_examples, generator=seeding.generator(seed, "data_order", item=epoch))


def batch_draws(params: Params, step: int, shape: tuple[int, ...], device: torch.device, objective: Objective
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The timesteps, noise and (for images with ``train.hflip``) flips of the global batch of
    ``step``, from the step's own generator: the same on every rank and after a resume.

    Timesteps are the ``objective``'s draws: integers in 0..T-1 (the discrete diffusion's steps,
    NCSN's levels) or continuous times t ~ U(eps, 1) (denoising score matching)."""
    g = seeding.generator(params.seed, "train_noise", item=step, device=device)
    batch = params.train.batch_size
    t = objective.draw_timesteps(batch, g, device)
    noise = torch.randn((batch, *shape), device=device, generator=g)
    flip = None
    if params.train.hflip and len(shape) == 3:
        flip = torch.rand(batch, device=device, generator=g) < 0.5
    return t, noise, flip


def seed_dropout(seed: int, step: int, rank: int, device: torch.device) -> None:
    """Seed the generators the network's dropout draws from (the CPU's and, on CUDA, the
    device's default generator) for ``step`` on ``rank``. Only these two: ``torch.manual_seed``
    also queues a seeding of every CUDA device, which costs more than a small step."""
    step_seed = seeding.stream_seed(seed, "dropout", item=step, key=(rank,))
    torch.default_generator.manual_seed(step_seed)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(step_seed)


def rank_batch(params: Params, step: int, indices: torch.Tensor, data: torch.Tensor,
               to_x: Callable[[torch.Tensor], torch.Tensor], dist: DistInfo, objective: Objective
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's share of the global batch ``indices`` of ``step`` (examples rank, rank + W,
    ...) in model space, flipped as drawn, with its timesteps and noise: together the ranks
    compute exactly the global batch a single process would."""
    mine = slice(dist.rank, None, dist.world_size)
    x0 = to_x(data[indices[mine].to(data.device)])
    t, noise, flip = batch_draws(params, step, tuple(x0.shape[1:]), data.device, objective)
    if flip is not None:
        x0 = torch.where(flip[mine, None, None, None], x0.flip(-1), x0)
    return x0, t[mine], noise[mine]


def _model_space(train_levels: np.ndarray, meta: dict[str, Any], device: torch.device
                 ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The data on the device (images as grey levels) and the map of a batch to model space."""
    data = torch.as_tensor(train_levels).to(device)
    if meta["kind"] != "image":
        return data, lambda v: v.float()
    lut = torch.as_tensor(to_model_space(np.arange(meta["num_levels"]), meta["num_levels"]), device=device)
    return data, lambda v: lut[v.long()]


def _diverged(what: str, step: int, state_path: str | Path | None) -> TrainingDiverged:
    return TrainingDiverged(f"{what} in the steps up to {step}; nothing from them was logged or saved, "
                            f"and the last good checkpoint ({state_path}) was kept")


def _check_finite(loss_sum: torch.Tensor, model: nn.Module, step: int, state_path: str | Path | None) -> None:
    """Before a checkpoint: the losses since the last log and the weights are finite."""
    if not bool(torch.isfinite(loss_sum)):
        raise _diverged("training loss became non-finite (nan or inf)", step, state_path)
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise _diverged("the weights became non-finite (nan or inf)", step, state_path)


def _mean_loss(loss_sum: torch.Tensor, count: int, dist: DistInfo) -> float:
    """The mean loss over every rank's examples since the last log (sums and counts are
    all-reduced, not means of means)."""
    totals = torch.stack([loss_sum, torch.tensor(float(count), dtype=torch.float64, device=loss_sum.device)])
    if dist.distributed:
        torch.distributed.all_reduce(totals)
    return (totals[0] / totals[1]).item()


def _log_row(state: TrainingState, mean_loss: float, grad_norm: torch.Tensor | None, images_per_s: float,
             state_path: str | Path | None) -> dict[str, float]:
    """The history row of the log interval ending at this step (the loss must be finite)."""
    if not math.isfinite(mean_loss):
        raise _diverged(f"training loss became {mean_loss}", state.step, state_path)
    row = {"step": state.step, "loss": mean_loss, "lr": state.scheduler.get_last_lr()[0],
           "grad_norm": 0.0 if grad_norm is None else float(grad_norm), "images_per_s": images_per_s}
    state.history.append(row)
    return row


def _probe_due(step: int, every: int, steps: int) -> bool:
    return every > 0 and (step % every == 0 or step == steps)


def _run_probe(probe: Probe, state: TrainingState, on_log: LogCallback | None) -> None:
    """Score the EMA network (the one sampled and evaluated) and record the point."""
    metrics = probe(state.ema)
    state.curve.append({"step": state.step, **metrics})
    if on_log is not None:
        on_log(state.step, metrics)


@dataclass
class _LogWindow:
    """The losses since the last log row, and when that row was written."""

    loss_sum: torch.Tensor
    step: int
    count: int = 0
    grad_norm: torch.Tensor | None = None
    time: float = field(default_factory=time.perf_counter)


def _after_step(params: Params, state: TrainingState, window: _LogWindow, bar: Any, dist: DistInfo,
                state_path: str | Path | None, identity: RunIdentity, on_log: LogCallback | None,
                probe: Probe | None) -> None:
    """What follows a step when it is due: the log row, the probe, the finite check and the save."""
    tc, step = params.train, state.step
    if step % tc.log_every == 0 or step == tc.steps:
        images_per_s = (step - window.step) * tc.batch_size / (time.perf_counter() - window.time)
        row = _log_row(state, _mean_loss(window.loss_sum, window.count, dist), window.grad_norm, images_per_s,
                       state_path)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        if on_log is not None and dist.is_main:
            on_log(step, {k: v for k, v in row.items() if k != "step"})
        window.loss_sum.zero_()
        window.count, window.time, window.step = 0, time.perf_counter(), step
    if probe is not None and dist.is_main and _probe_due(step, tc.bound_every, tc.steps):
        _run_probe(probe, state, on_log)
    if step % tc.checkpoint_every == 0 or step == tc.steps:
        _check_finite(window.loss_sum, state.model, step, state_path)
        if state_path is not None and dist.is_main:
            save_training_state(state_path, state, identity)


def train(params: Params, train_levels: np.ndarray, meta: dict[str, Any], device: torch.device,
          dist: DistInfo = ONE_PROCESS, state_path: str | Path | None = None,
          on_log: LogCallback | None = None, progress: bool = True, probe: Probe | None = None,
          on_start: Callable[[TrainingState], None] | None = None) -> TrainResult:
    """Train the network of ``params`` on ``train_levels`` (grey levels or vectors).

    ``state_path``: where the resumable training state is saved every
    ``train.checkpoint_every`` steps; if it already holds a state from the same training
    config, training resumes from it. ``probe``: called on rank 0 with the EMA network every
    ``train.bound_every`` steps and at the last step; its metrics go to ``on_log`` and to the
    result's ``curve``. ``on_start``: called with the training state once a saved state was
    restored (or not), before the first step: where the caller opens its tracking run (or
    continues the one named by the restored ``state.run_id``) and sets ``state.run_id``, which
    later saves of the state record.
    """
    from tqdm.auto import tqdm

    tc = params.train
    check_batch_size(params, len(train_levels), dist)
    trainer = setup_training(params, meta, device, dist)
    state = trainer.state
    identity = run_identity(params, precision_name(trainer.amp_dtype), device, dist)
    if state_path is not None and Path(state_path).exists():
        restore_training_state(state_path, state, identity, tc.steps)
    start_step = state.step
    if on_start is not None:
        on_start(state)
    data, to_x = _model_space(train_levels, meta, device)
    batches_per_epoch = len(data) // tc.batch_size
    window = _LogWindow(torch.zeros((), dtype=torch.float64, device=device), step=state.step)
    order_epoch, order = -1, torch.empty(0, dtype=torch.long)

    with flush_denormals(device), tqdm(total=tc.steps, initial=state.step, desc="train", unit="step",
                                       dynamic_ncols=True, mininterval=2.0,
                                       disable=not (progress and dist.is_main)) as bar:
        state.model.train()
        while state.step < tc.steps:
            epoch, position = divmod(state.step, batches_per_epoch)
            if epoch != order_epoch:  # the epoch's permutation, drawn once per epoch
                order_epoch, order = epoch, epoch_order(params.seed, epoch, len(data))
            global_batch = order[position * tc.batch_size:(position + 1) * tc.batch_size]
            x0, t, noise = rank_batch(params, state.step, global_batch, data, to_x, dist, trainer.objective)
            seed_dropout(params.seed, state.step, dist.rank, device)
            losses, norm = train_step(trainer, x0, t, noise)
            window.grad_norm = norm if norm is not None else window.grad_norm
            window.loss_sum += losses.sum().double()
            window.count += losses.shape[0]
            bar.update(1)
            _after_step(params, state, window, bar, dist, state_path, identity, on_log, probe)
    initial = ema_initial_weight(tc.ema_decay, state.step)
    if initial > EMA_INITIAL_WEIGHT_NOTE:
        print0(f"note: the averaged weights (train.ema_decay={tc.ema_decay}) still hold {initial:.0%} of the initial "
               f"network after {state.step} steps; the EMA model's numbers are mostly the untrained network's "
               "(train longer or lower train.ema_decay)")
    return TrainResult(model=state.model, ema=state.ema, step=state.step, history=state.history, curve=state.curve,
                       start_step=start_step)
