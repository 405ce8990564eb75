"""The peer of benchmarks/bench_train.py: lucidrains' denoising-diffusion-pytorch (the
``bench`` extra), built at a matched parameter count, and its Trainer's training step,
sampling step and FLOPs, replicated without its data loader and FID/sample hooks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from _common import batches, sync, timed_steps
from _memory import MemoryMeter
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ddpm.nn import count_parameters
from ddpm.pipeline.runtime import autocast

if TYPE_CHECKING:
    from bench_train import Settings

PEER_ADAM_BETAS = (0.9, 0.99)      # denoising_diffusion_pytorch.Trainer defaults
PEER_EMA = {"beta": 0.995, "update_every": 10}
PEER_MAX_GRAD_NORM = 1.0


def count_flops(fn: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def peer_available() -> str | None:
    """None when denoising-diffusion-pytorch imports, else why not."""
    try:
        import denoising_diffusion_pytorch  # noqa: F401
        import ema_pytorch  # noqa: F401
    except Exception as err:  # ImportError, or a broken dependency of it
        return f"{type(err).__name__}: {err}"
    return None


def build_peer(shape: tuple[int, int, int], dim: int, mults: tuple[int, ...], dropout: float,
               timesteps: int) -> nn.Module:
    from denoising_diffusion_pytorch import GaussianDiffusion as PeerDiffusion
    from denoising_diffusion_pytorch import Unet

    unet = Unet(dim=dim, dim_mults=mults, channels=shape[0], dropout=dropout)
    # Our defaults: linear betas, eps prediction (its defaults are sigmoid and v).
    return PeerDiffusion(unet, image_size=shape[1], timesteps=timesteps, objective="pred_noise",
                         beta_schedule="linear")


def match_peer_dim(shape: tuple[int, int, int], mults: tuple[int, ...], target: int) -> tuple[int, int]:
    """The peer Unet ``dim`` (even) whose parameter count is nearest ``target``; multiples of
    8 preferred when one of them is within 5%."""
    from denoising_diffusion_pytorch import Unet

    counts = {}
    with torch.device("meta"):
        for dim in range(4, 513, 2):
            counts[dim] = count_parameters(Unet(dim=dim, dim_mults=mults, channels=shape[0]))
    for step in (8, 4, 2):
        best = min((d for d in counts if d % step == 0), key=lambda d: abs(counts[d] / target - 1))
        if abs(counts[best] / target - 1) <= 0.05:
            return best, counts[best]
    return best, counts[best]


def peer_train_round(peer: dict[str, Any], shape: tuple[int, int, int], s: Settings, device: torch.device,
                     amp_dtype: torch.dtype, seed: int) -> dict[str, Any]:
    """Its Trainer.train step, replicated without the data loader and the FID/sample hooks."""
    from ema_pytorch import EMA

    with MemoryMeter(device) as mem:
        torch.manual_seed(seed)
        model = build_peer(shape, peer["dim"], peer["mults"], peer["dropout"], peer["timesteps"]).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=PEER_ADAM_BETAS)
        ema = EMA(model, update_after_step=0, **PEER_EMA)  # steady state: a lerp every 10th step
        ema.to(device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        data = torch.rand(4 * s.batch, *shape, device=device)  # images in [0, 1]; it maps them to [-1, 1]
        model.train()

        def step(i: int) -> None:
            start = (i * s.batch) % data.shape[0]
            x = data[start:start + s.batch]
            with autocast(device, amp_dtype):
                loss = model(x)
                loss.item()  # the Trainer logs total_loss += loss.item() every step
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), PEER_MAX_GRAD_NORM)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            ema.update()

        for i in range(s.warmup):
            step(i)
        sync(device)
        t0 = time.perf_counter()
        for i in range(s.warmup, s.warmup + s.steps):
            step(i)
        sync(device)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "img_per_s": s.steps * s.batch / seconds, "peak_mib": mem.peak_mib,
            "peak_abs_mib": mem.peak_abs_mib}


def peer_sample_round(peer: dict[str, Any], shape: tuple[int, int, int], s: Settings, device: torch.device,
                      seed: int) -> dict[str, Any]:
    with MemoryMeter(device) as mem:
        torch.manual_seed(seed)
        model = build_peer(shape, peer["dim"], peer["mults"], peer["dropout"], peer["timesteps"])
        model = model.to(device).eval().requires_grad_(False)
        x = torch.randn(s.batch, *shape, device=device)
        t = peer["timesteps"] - 1

        def step() -> None:
            nonlocal x, t
            x, _ = model.p_sample(x, t)  # one reverse step under its own inference_mode
            t -= 1

        seconds = timed_steps(step, s.sample_warmup, s.sample_steps, device)
    return {"seconds": seconds, "nfe_per_s": s.sample_steps * s.batch / seconds, "peak_mib": mem.peak_mib,
            "peak_abs_mib": mem.peak_abs_mib}


def peer_flops(peer: dict[str, Any], shape: tuple[int, int, int], device: torch.device,
               amp_dtype: torch.dtype) -> dict[str, int]:
    torch.manual_seed(0)
    model = build_peer(shape, peer["dim"], peer["mults"], peer["dropout"], peer["timesteps"]).to(device).train()
    x = torch.rand(1, *shape, device=device)

    def step() -> None:
        with autocast(device, amp_dtype):
            loss = model(x)
        loss.backward()

    def forward() -> None:
        with torch.no_grad():
            model.eval().model(x * 2 - 1, torch.zeros(1, dtype=torch.long, device=device))

    return {"train": count_flops(step), "forward": count_flops(forward)}


def peer_train_step(model: nn.Module, data: torch.Tensor, batch: int, amp_dtype: torch.dtype
                    ) -> Callable[[], None]:
    """One optimizer step per call at issue 12's protocol (its ``GaussianDiffusion`` forward
    draws t and noise and returns the MSE; backward; ``Adam(lr=1e-4)``; no clipping, no EMA).
    ``data`` holds images in [0, 1], which it maps to [-1, 1] itself."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    data_batches = batches(data, batch)
    model.train()

    def step() -> None:
        x = next(data_batches)
        with autocast(data.device, amp_dtype):
            loss = model(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def peer_sample_step(model: nn.Module, shape: tuple[int, int, int], batch: int, amp_dtype: torch.dtype,
                     device: torch.device) -> Callable[[], None]:
    """One reverse step per call (its ``p_sample``), walking down from t = T - 1, the network
    under ``amp_dtype`` autocast, in eval mode."""
    model.eval()
    x = torch.randn(batch, *shape, device=device)
    t = model.num_timesteps - 1

    def step() -> None:
        nonlocal x, t
        with autocast(device, amp_dtype):
            x, _ = model.p_sample(x, t)
        x = x.float()
        t = t - 1 if t > 0 else model.num_timesteps - 1

    return step
