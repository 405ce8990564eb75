"""A U-Net built of ShuffleNet units (Zhang et al. 2018), with an MLP time embedding.

The layout is the DDPM U-Net's (``ddpm.nn.unet``: levels of ``num_res_blocks`` blocks,
stride-2 conv downsampling, nearest-neighbour upsampling, skips concatenated on the way up),
without attention, and with every residual block replaced by a ShuffleNet unit: a grouped
1x1 convolution into a bottleneck of a quarter of the output channels, a channel shuffle, a
depthwise 3x3 convolution and a grouped 1x1 convolution back out, around a residual
connection. As in the DDPM blocks, GroupNorm replaces BatchNorm (a sample's prediction must
not depend on the rest of its batch), SiLU replaces ReLU, the normalisation comes before each
convolution, and the timestep enters every unit. (The MNIST write-up this network comes from,
bot66/MNISTDiffusion, feeds a learned per-timestep table into its time MLPs: that is
``time_embedding="learned"`` here.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ddpm.nn.dropout import Dropout
from ddpm.nn.embeddings import interpolate_rows, timestep_embedding
from ddpm.nn.unet import Downsample, Upsample, group_norm, zero_module

TIME_EMBEDDINGS = ("learned", "sinusoidal")
BOTTLENECK_DIVISOR = 4  # Zhang et al. Sec. 4: bottleneck channels = 1/4 of the unit's output


class ShuffleUnit(nn.Module):
    """ShuffleNet unit (Zhang et al. 2018, fig. 2b), pre-activation, with the timestep added.

    ``GN, SiLU, GConv1x1 (+ time) -> GN, SiLU, shuffle, DWConv3x3 -> GN, GConv1x1``, added to
    the input (through a 1x1 conv where the channel count changes). As in the paper, no
    activation follows the depthwise convolution. The last conv is zero-initialised, so a
    fresh unit is the identity (on its shortcut).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, groups: int, dropout: float) -> None:
        super().__init__()
        mid = out_channels // BOTTLENECK_DIVISOR
        self.in_layers = nn.Sequential(
            group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, mid, 1, groups=groups)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, mid))
        # The shuffle lets the second grouped conv's groups read from every group of the first.
        self.out_layers = nn.Sequential(
            group_norm(mid),
            nn.SiLU(),
            nn.ChannelShuffle(groups),
            nn.Conv2d(mid, mid, 3, padding=1, groups=mid),
            group_norm(mid),
            Dropout(dropout),
            zero_module(nn.Conv2d(mid, out_channels, 1, groups=groups)),
        )
        self.skip = nn.Identity()
        if in_channels != out_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class ShuffleUNet(nn.Module):
    """U-Net of ShuffleNet units. Call as ``model(x_t, t)`` with ``x_t``
    [B, in_channels, image_size, image_size] and ``t`` a LongTensor [B] in
    ``0 .. timesteps - 1`` (or a float tensor of fractional timesteps: the learned table is
    interpolated linearly); returns [B, out_channels, image_size, image_size].

    Level ``i`` of ``channel_mult`` runs at ``image_size / 2**i`` with
    ``base_channels * channel_mult[i]`` channels, as in :class:`ddpm.nn.unet.UNet`. The time
    embedding is an MLP (Linear, SiLU, Linear, to ``4 * base_channels``) whose input is a
    ``base_channels``-wide vector per timestep: a learned table row (``time_embedding=
    "learned"``, one free vector per step) or the sinusoidal embedding of t (``"sinusoidal"``).
    ``groups`` is the number of groups of the pointwise convolutions; ``base_channels`` must
    be a multiple of ``4 * groups`` so every bottleneck splits evenly into the groups.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: int,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        dropout: float = 0.1,
        timesteps: int = 1000,
        time_embedding: str = "sinusoidal",
        groups: int = 4,
    ) -> None:
        super().__init__()
        channel_mult = tuple(channel_mult)
        _validate(in_channels, out_channels, image_size, base_channels, channel_mult, num_res_blocks, dropout,
                  timesteps, time_embedding, groups)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.image_size, self.base_channels = image_size, base_channels
        self.time_embedding = time_embedding
        emb_channels = 4 * base_channels

        def unit(in_ch: int, out_ch: int) -> ShuffleUnit:
            return ShuffleUnit(in_ch, out_ch, emb_channels, groups, dropout)

        if time_embedding == "learned":
            self.time_table = nn.Embedding(timesteps, base_channels)
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )
        self.input_conv = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        ch = base_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(unit(ch, base_channels * mult))
                ch = base_channels * mult
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(Downsample(ch))
                skip_channels.append(ch)
        self.middle = nn.ModuleList([unit(ch, ch), unit(ch, ch)])
        # As in the DDPM U-Net, each level up takes num_res_blocks + 1 skips; the last unit of
        # a level (but the top one) is followed by the upsampling.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                self.up.append(unit(ch + skip_channels.pop(), base_channels * mult))
                ch = base_channels * mult
                if level != 0 and i == num_res_blocks:
                    self.up.append(Upsample(ch))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def embed_time(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The time embedding [B, 4 * base_channels] of timesteps ``t`` [B]."""
        if self.time_embedding == "learned" and t.is_floating_point():
            features = interpolate_rows(self.time_table.weight, t)
        elif self.time_embedding == "learned":
            features = self.time_table(t)
        else:
            features = timestep_embedding(t, self.base_channels)
        return self.time_mlp(features.to(dtype))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.embed_time(t, x.dtype)
        h = self.input_conv(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ShuffleUnit) else layer(h)
            hs.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, ShuffleUnit):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.out(h)


def _validate(
    in_channels: int, out_channels: int, image_size: int, base_channels: int, channel_mult: tuple[int, ...],
    num_res_blocks: int, dropout: float, timesteps: int, time_embedding: str, groups: int,
) -> None:
    def is_pos_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("image_size", image_size),
                        ("base_channels", base_channels), ("num_res_blocks", num_res_blocks),
                        ("timesteps", timesteps)):
        if not is_pos_int(value):
            raise ValueError(f"ShuffleUNet: {name}={value!r} must be a positive integer")
    if not is_pos_int(groups) or groups < 2:
        raise ValueError(f"ShuffleUNet: groups={groups!r} must be an integer >= 2 (one group has nothing to shuffle)")
    if base_channels % (BOTTLENECK_DIVISOR * groups):
        multiple = BOTTLENECK_DIVISOR * groups
        raise ValueError(
            f"ShuffleUNet: base_channels={base_channels} must be a multiple of {multiple} "
            f"({BOTTLENECK_DIVISOR} x groups={groups}): each unit's bottleneck, a quarter of its channels, "
            f"splits into {groups} groups (e.g. {max(multiple, base_channels // multiple * multiple)})"
        )
    if not channel_mult or not all(is_pos_int(m) for m in channel_mult):
        raise ValueError(f"ShuffleUNet: channel_mult={list(channel_mult)} must be a non-empty list of positive "
                         "integers, e.g. [1, 2, 2]")
    is_number = isinstance(dropout, (int, float)) and not isinstance(dropout, bool)
    if not is_number or not 0.0 <= dropout < 1.0:
        raise ValueError(f"ShuffleUNet: dropout={dropout!r} must be a number in [0, 1)")
    if time_embedding not in TIME_EMBEDDINGS:
        raise ValueError(f"ShuffleUNet: time_embedding={time_embedding!r} is not one of "
                         f"{', '.join(map(repr, TIME_EMBEDDINGS))}")
    halvings = len(channel_mult) - 1
    if image_size % 2**halvings:
        # The stride-2 conv rounds odd sizes up, so upsampling would not meet the skip tensor.
        raise ValueError(
            f"ShuffleUNet: image_size={image_size} cannot be halved {halvings} times for "
            f"channel_mult={list(channel_mult)}; use fewer levels or images whose size is a multiple of {2**halvings}"
        )
