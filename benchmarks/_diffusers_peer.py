"""The diffusers peer of benchmarks/bench_peers.py: ``UNet2DModel`` with ``DDPMScheduler``,
trained and sampled as a user of diffusers writes the loop (its ``train_unconditional``
example without the data loader, the clipping and the EMA), at the settings of issue 12."""

from __future__ import annotations

from collections.abc import Callable

import torch
from _common import batches
from torch import nn
from torch.nn import functional as F

from ddpm.pipeline.runtime import autocast

# block_out_channels per image shape: ~2.6M parameters at 1x28x28, ~7.9M at 3x32x32 (issue 12).
BLOCK_OUT_CHANNELS = {(1, 28, 28): (32, 64, 96), (3, 32, 32): (64, 112, 112, 128)}


def diffusers_available() -> str | None:
    """None when diffusers imports, else why not."""
    try:
        import diffusers  # noqa: F401
    except Exception as err:  # ImportError, or a broken dependency of it
        return f"{type(err).__name__}: {err}"
    return None


def build_unet2d(shape: tuple[int, int, int], dropout: float) -> nn.Module:
    """``UNet2DModel`` with attention in the lowest block only, 2 layers per block, 8 groups and
    heads of 32 channels (the settings issue 12 measured)."""
    from diffusers import UNet2DModel

    channels = BLOCK_OUT_CHANNELS[tuple(shape)]
    n = len(channels)
    return UNet2DModel(sample_size=shape[1], in_channels=shape[0], out_channels=shape[0],
                       block_out_channels=channels, layers_per_block=2,
                       down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",),
                       up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
                       norm_num_groups=8, attention_head_dim=32, dropout=dropout)


def diffusers_train_step(model: nn.Module, data: torch.Tensor, batch: int, amp_dtype: torch.dtype,
                         seed: int) -> Callable[[], None]:
    """One optimizer step per call: t and noise drawn, ``add_noise``, forward, MSE on the noise,
    backward, ``Adam(lr=1e-4)``. ``data`` holds images in [-1, 1]."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator(device=data.device).manual_seed(seed)
    data_batches = batches(data, batch)
    model.train()

    def step() -> None:
        x0 = next(data_batches)
        noise = torch.randn(x0.shape, generator=g, device=x0.device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=g, device=x0.device)
        x_t = scheduler.add_noise(x0, noise, t)
        with autocast(x0.device, amp_dtype):
            pred = model(x_t, t).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def diffusers_sample_step(model: nn.Module, shape: tuple[int, int, int], batch: int, amp_dtype: torch.dtype,
                          device: torch.device, seed: int) -> Callable[[], None]:
    """One ancestral step per call (``model(x, t).sample`` then ``DDPMScheduler.step``), walking
    down from t = T - 1; the network under ``amp_dtype`` autocast, in eval mode."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(1000)
    timesteps = scheduler.timesteps.tolist()
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn((batch, *shape), generator=g, device=device)
    i = 0
    model.eval()

    @torch.no_grad()
    def step() -> None:
        nonlocal x, i
        t = timesteps[i % len(timesteps)]
        with autocast(device, amp_dtype):
            out = model(x, t).sample
        x = scheduler.step(out.float(), t, x, generator=g).prev_sample
        i += 1

    return step
