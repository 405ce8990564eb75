"""Denoising networks: an MLP for vector data, the DDPM U-Net for images, and their factory."""

from __future__ import annotations

from typing import Any

from torch import nn

from ddpm.errors import ConfigError
from ddpm.nn.embeddings import timestep_embedding
from ddpm.nn.mlp import MLP
from ddpm.nn.unet import UNet

__all__ = ["MLP", "UNet", "build_model", "count_parameters", "timestep_embedding"]

MODEL_NAMES = ("auto", "mlp", "unet")


def build_model(
    cfg: Any, data_shape: tuple[int, ...], timesteps: int, learn_sigma: bool
) -> nn.Module:
    """Build the network for data of shape ``data_shape``: (D,) vectors or (C, H, W) images.

    ``cfg`` is the ``model`` params section (any object with its attributes). ``name="auto"``
    picks the MLP for vectors and the U-Net for images. ``learn_sigma`` doubles the output
    channels for Improved DDPM's learned variance. ``cfg.time_embedding`` applies to the MLP
    only; the U-Net always uses the sinusoidal embedding, as in DDPM. Settings that do not fit
    the data raise ``ConfigError`` naming the params key.
    """
    data_shape = tuple(data_shape)
    name = _network_name(cfg.name, data_shape)
    out_factor = 2 if learn_sigma else 1
    try:
        if name == "mlp":
            return MLP(
                dim=data_shape[0],
                hidden=cfg.mlp_hidden,
                num_layers=cfg.mlp_layers,
                timesteps=timesteps,
                time_embedding=cfg.time_embedding,
                out_dim=out_factor * data_shape[0],
            )
        channels, image_size, _ = data_shape
        return UNet(
            in_channels=channels,
            out_channels=out_factor * channels,
            image_size=image_size,
            base_channels=cfg.base_channels,
            channel_mult=cfg.channel_mult,
            num_res_blocks=cfg.num_res_blocks,
            attn_resolutions=cfg.attn_resolutions,
            dropout=cfg.dropout,
            num_heads=cfg.num_heads,
        )
    except ValueError as err:
        # The constructors name their own arguments; say which params section they come from.
        raise ConfigError(f"model settings do not fit data of shape {data_shape}: {err}") from None


def _network_name(name: str, data_shape: tuple[int, ...]) -> str:
    """``"mlp"`` or ``"unet"``: the network ``model.name`` asks for, checked against the data."""
    if name not in MODEL_NAMES:
        raise ConfigError(f"model.name={name!r} is not one of {', '.join(map(repr, MODEL_NAMES))}")
    if len(data_shape) == 1:
        kind, fits = "vector", "'mlp' or 'auto'"
    elif len(data_shape) == 3:
        kind, fits = "image", "'unet' or 'auto'"
        if data_shape[1] != data_shape[2]:
            raise ConfigError(f"the U-Net needs square images, got data shape {data_shape}")
    else:
        raise ConfigError(f"data shape {data_shape} is neither (D,) vectors nor (C, H, W) images")
    network = {"vector": "mlp", "image": "unet"}[kind] if name == "auto" else name
    if (network == "mlp") != (kind == "vector"):
        raise ConfigError(f"model.name={name!r} does not fit {kind} data of shape {data_shape}; use {fits}")
    return network


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters in ``model``."""
    return sum(p.numel() for p in model.parameters())
