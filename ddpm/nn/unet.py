"""The DDPM U-Net (Ho et al. 2020, appendix B), in the module layout of improved-diffusion.

A PixelCNN++-style backbone: residual blocks with a timestep embedding injected into every
block, self-attention at chosen resolutions and in the middle, stride-2 conv downsampling,
nearest-neighbour upsampling, and skip connections concatenated on the way up.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ddpm.nn.dropout import Dropout
from ddpm.nn.embeddings import timestep_embedding


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm group count: 32 as in DDPM where ``channels`` allows, else the largest divisor
    of ``channels`` that is <= 32 and leaves at least two channels per group.

    One channel per group would make GroupNorm an InstanceNorm, which subtracts the per-channel
    time-embedding shift that a ResBlock adds just before its second norm: the block, and a
    narrow U-Net as a whole, would ignore t.
    """
    largest = max(1, min(max_groups, channels // 2))
    return next(g for g in range(largest, 0, -1) if channels % g == 0)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters: a residual branch ending in it starts as the identity, and the
    output layer starts by predicting zero (as in Ho et al.'s code and improved-diffusion)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Two 3x3 convs with GroupNorm/SiLU pre-activation; the time embedding is added in between."""

    def __init__(
        self, in_channels: int, out_channels: int, emb_channels: int, dropout: float
    ) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            group_norm(out_channels),
            nn.SiLU(),
            Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        # DDPM's "nin_shortcut": a 1x1 conv only where the channel count changes.
        self.skip = nn.Identity()
        if in_channels != out_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._forward_in_place(x, emb)
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)

    def _forward_in_place(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The same ops on the same values, each writing into a tensor it just made: sampling
        and the bound allocate and stream three activations fewer per block (the CIFAR-size
        U-Net's sampling step is faster for it on one CPU thread: benchmarks/README.md). Only
        without autograd, which needs the SiLUs' inputs and would refuse the in-place writes."""
        norm1, _, conv1 = self.in_layers
        h = conv1(F.silu(norm1(x), inplace=True))
        h += self.emb_layers(emb)[:, :, None, None]
        norm2, _, dropout, conv2 = self.out_layers
        h = conv2(dropout(F.silu(norm2(h), inplace=True)))
        return h.add_(self.skip(x))  # x + h and h + x are the same float sums


# Up to this many tokens, bf16 attention on the CPU is computed explicitly: fp32 logits and
# softmax, then the weights in bf16 times the values (improved-diffusion's QKVAttention, with
# its logits in fp32 too), rather than by PyTorch's fused CPU kernel, whose bf16 backward is slow
# on small blocks. Forward + backward on 2 AMD EPYC cores with AVX512-BF16
# (``python benchmarks/bench_components.py --only attention``): 3.7x faster at the digits U-Net's
# 16 tokens (the default run's training step 14% faster), 1.1x at MNIST's 196; the fused kernel is
# 1.1x faster at CIFAR-10's 256 tokens and 1.9x at 1024 (nor does it build the [tokens x tokens]
# weights). Its rounding error is bounded in tests/nn/test_nn.py.
SMALL_ATTENTION_TOKENS = 196


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention of q, k, v [B, heads, tokens, d] with scale 1/sqrt(d).

    fp32 (training without autocast, sampling, the bound) and CUDA always take
    ``F.scaled_dot_product_attention``; bf16 on the CPU over at most ``SMALL_ATTENTION_TOKENS``
    tokens the explicit form above."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] <= SMALL_ATTENTION_TOKENS:
        logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
        return torch.matmul(torch.softmax(logits, dim=-1).to(v.dtype), v)
    return F.scaled_dot_product_attention(q, k, v)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.num_heads
        # The 1x1 convs as matmuls over tokens [B, HW, C] (the same weights and values): the
        # projection writes q, k and v with the channel dim contiguous, which SDPA's fused CPU
        # and CUDA kernels need (given a strided channel dim, SDPA on the CPU falls back to its
        # math path, which also upcasts bf16 to fp32), so no copy is made for them; a 1x1 conv
        # instead reorders its input and output on the CPU (oneDNN's blocked layout).
        tokens = self.norm(x).reshape(b, c, h * w).transpose(1, 2)
        qkv = F.linear(tokens, self.qkv.weight.view(3 * c, c), self.qkv.bias)  # [B, HW, 3C]
        q, k, v = qkv.view(b, h * w, 3, self.num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v)  # [B, heads, HW, d]
        out = out.transpose(1, 2).reshape(b, h * w, c)
        out = F.linear(out, self.proj_out.weight.view(c, c), self.proj_out.bias)  # [B, HW, C]
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.interpolate, not a broadcast view and one copy (the same values): the view's backward
        # is a strided sum, much slower on the CPU than interpolate's (benchmarks/README.md has the
        # figure), which made the upsampling a training step's slowest non-conv op.
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepSequential(nn.Sequential):
    """A Sequential that passes the time embedding to the residual blocks in it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """DDPM U-Net. Call as ``model(x_t, t)`` with ``x_t`` [B, in_channels, image_size, image_size]
    and ``t`` a LongTensor [B]; returns [B, out_channels, image_size, image_size].

    Level ``i`` of ``channel_mult`` runs at resolution ``image_size / 2**i`` with
    ``base_channels * channel_mult[i]`` channels. DDPM's CIFAR-10 model is
    ``UNet(3, 3, 32, 128, (1, 2, 2, 2), 2, (16,), 0.1)``. The output conv is zero-initialised,
    so a fresh model predicts zeros.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: int,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_heads: int = 1,
    ) -> None:
        super().__init__()
        channel_mult, attn_resolutions = tuple(channel_mult), tuple(attn_resolutions)
        _validate(in_channels, out_channels, image_size, base_channels, channel_mult, num_res_blocks,
                  attn_resolutions, dropout, num_heads)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.image_size, self.base_channels = image_size, base_channels
        emb_channels = 4 * base_channels
        block = functools.partial(_block, emb_channels=emb_channels, dropout=dropout,
                                  attn_resolutions=attn_resolutions, num_heads=num_heads)
        # Created in this order (parameter initialisation draws from the global RNG in creation order).
        self.time_embed = nn.Sequential(
            nn.Linear(base_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )
        self.input_blocks, skip_channels, ch, res = _input_blocks(
            block, in_channels, base_channels, image_size, channel_mult, num_res_blocks)
        self.middle_block = TimestepSequential(
            ResBlock(ch, ch, emb_channels, dropout),
            AttentionBlock(ch, num_heads),
            ResBlock(ch, ch, emb_channels, dropout),
        )
        self.output_blocks, ch = _output_blocks(block, skip_channels, ch, res, base_channels, channel_mult,
                                                num_res_blocks)
        self.out = nn.Sequential(
            group_norm(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, out_channels, 3, padding=1))
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # The sinusoid is float32; match the activations so a bf16/fp16 model also works.
        emb = self.time_embed(timestep_embedding(t, self.base_channels).to(x.dtype))
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)



def _block(in_ch: int, out_ch: int, res: int, *, emb_channels: int, dropout: float,
           attn_resolutions: tuple[int, ...], num_heads: int) -> list[nn.Module]:
    """A residual block, followed by attention where ``res`` is in attn_resolutions."""
    layers: list[nn.Module] = [ResBlock(in_ch, out_ch, emb_channels, dropout)]
    if res in attn_resolutions:
        layers.append(AttentionBlock(out_ch, num_heads))
    return layers


def _input_blocks(block: Callable[[int, int, int], list[nn.Module]], in_channels: int, base_channels: int,
                  image_size: int, channel_mult: tuple[int, ...], num_res_blocks: int
                  ) -> tuple[nn.ModuleList, list[int], int, int]:
    """The way down: the input conv, then each level's res blocks and a downsample between
    levels. Also the channels of each output (the skips), and the last channels and resolution."""
    blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, base_channels, 3, padding=1))])
    skip_channels = [base_channels]
    ch, res = base_channels, image_size
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            blocks.append(TimestepSequential(*block(ch, base_channels * mult, res)))
            ch = base_channels * mult
            skip_channels.append(ch)
        if level != len(channel_mult) - 1:
            blocks.append(TimestepSequential(Downsample(ch)))
            skip_channels.append(ch)
            res //= 2
    return blocks, skip_channels, ch, res


def _output_blocks(block: Callable[[int, int, int], list[nn.Module]], skip_channels: list[int], ch: int, res: int,
                   base_channels: int, channel_mult: tuple[int, ...], num_res_blocks: int
                   ) -> tuple[nn.ModuleList, int]:
    """The way up, and its last channels. Each level up consumes num_res_blocks + 1 skips
    (``skip_channels``, popped): the level's res blocks and the downsample (or the input conv)
    that preceded them."""
    blocks = nn.ModuleList()
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            layers = block(ch + skip_channels.pop(), base_channels * mult, res)
            ch = base_channels * mult
            if level != 0 and i == num_res_blocks:
                layers.append(Upsample(ch))
                res *= 2
            blocks.append(TimestepSequential(*layers))
    return blocks, ch


def _validate(
    in_channels: int,
    out_channels: int,
    image_size: int,
    base_channels: int,
    channel_mult: tuple[int, ...],
    num_res_blocks: int,
    attn_resolutions: tuple[int, ...],
    dropout: float,
    num_heads: int,
) -> None:
    def is_pos_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    for name, value in (
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("image_size", image_size),
        ("base_channels", base_channels),
        ("num_res_blocks", num_res_blocks),
        ("num_heads", num_heads),
    ):
        if not is_pos_int(value):
            raise ValueError(f"UNet: {name}={value!r} must be a positive integer")
    if not channel_mult or not all(is_pos_int(m) for m in channel_mult):
        raise ValueError(
            f"UNet: channel_mult={list(channel_mult)} must be a non-empty list of positive "
            "integers, e.g. [1, 2, 2]"
        )
    is_number = isinstance(dropout, (int, float)) and not isinstance(dropout, bool)
    if not is_number or not 0.0 <= dropout < 1.0:
        raise ValueError(f"UNet: dropout={dropout!r} must be a number in [0, 1)")

    _validate_levels(image_size, base_channels, channel_mult, attn_resolutions, num_heads)


def _validate_levels(
    image_size: int, base_channels: int, channel_mult: tuple[int, ...], attn_resolutions: tuple[int, ...],
    num_heads: int,
) -> None:
    """The levels fit the image size, and the attention blocks fit their resolutions and heads."""
    halvings = len(channel_mult) - 1
    if image_size % 2**halvings:
        # The stride-2 conv rounds odd sizes up, so upsampling would not meet the skip tensor.
        possible = (image_size & -image_size).bit_length() - 1  # times image_size halves evenly
        multiple = 2**halvings
        raise ValueError(
            f"UNet: image_size={image_size} cannot be halved {halvings} times for "
            f"channel_mult={list(channel_mult)}; use at most {possible + 1} levels "
            f"(e.g. channel_mult={list(channel_mult[: possible + 1])}) or images whose size is "
            f"a multiple of {multiple} (e.g. {-(-image_size // multiple) * multiple})"
        )

    resolutions = [image_size // 2**i for i in range(len(channel_mult))]
    bad = [r for r in attn_resolutions if r not in resolutions]
    if bad:
        raise ValueError(
            f"UNet: attn_resolutions={list(attn_resolutions)} contains {bad}, which do not occur "
            f"for image_size={image_size} and channel_mult={list(channel_mult)}; the resolutions "
            f"are {resolutions}"
        )

    # Attention runs at the listed resolutions and always in the middle (lowest) resolution.
    attn_levels = {i for i, r in enumerate(resolutions) if r in attn_resolutions}
    for i in sorted(attn_levels | {len(channel_mult) - 1}):
        channels = base_channels * channel_mult[i]
        if channels % num_heads:
            raise ValueError(
                f"UNet: num_heads={num_heads} does not divide the {channels} channels of the "
                f"attention block at resolution {resolutions[i]} "
                f"(base_channels={base_channels} x channel_mult[{i}]={channel_mult[i]})"
            )
