"""Denoising networks and their factory: for vectors an MLP of conditional linear layers and an
MLP with a radial-basis-function hidden layer; for images the DDPM U-Net and a U-Net of
ShuffleNet units."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ddpm.errors import ConfigError
from ddpm.nn.embeddings import timestep_embedding
from ddpm.nn.mlp import MLP
from ddpm.nn.rbf import RBFMLP
from ddpm.nn.shufflenet import ShuffleUNet
from ddpm.nn.unet import UNet

__all__ = ["MLP", "RBFMLP", "ShuffleUNet", "UNet", "build_model", "count_parameters", "timestep_embedding"]

MODEL_NAMES = ("auto", "mlp", "unet", "rbf_mlp", "shufflenet_unet")
VECTOR_NETWORKS = ("mlp", "rbf_mlp")
IMAGE_NETWORKS = ("unet", "shufflenet_unet")


def build_model(
    cfg: Any, data_shape: tuple[int, ...], timesteps: int, learn_sigma: bool
) -> nn.Module:
    """Build the network for data of shape ``data_shape``: (D,) vectors or (C, H, W) images.

    ``cfg`` is the ``model`` params section (any object with its attributes). ``name="auto"``
    picks the MLP for vectors and the U-Net for images. ``learn_sigma`` doubles the output
    channels for Improved DDPM's learned variance. The vector networks read ``mlp_hidden``
    (``mlp`` also ``mlp_layers`` and ``time_embedding``); the image networks read
    ``base_channels``, ``channel_mult``, ``num_res_blocks`` and ``dropout`` (``unet`` also
    ``attn_resolutions`` and ``num_heads`` and always embeds t sinusoidally, as in DDPM;
    ``shufflenet_unet`` also ``time_embedding``). Settings that do not fit the data raise
    ``ConfigError`` naming the params key.
    """
    data_shape = tuple(data_shape)
    name = _network_name(cfg.name, data_shape)
    try:
        return _BUILDERS[name](cfg, data_shape, timesteps, 2 if learn_sigma else 1)
    except ValueError as err:
        # The constructors name their own arguments; say which params section they come from.
        raise ConfigError(f"model settings do not fit data of shape {data_shape}: {err}") from None


def _mlp(cfg: Any, shape: tuple[int, ...], timesteps: int, out_factor: int) -> nn.Module:
    return MLP(dim=shape[0], hidden=cfg.mlp_hidden, num_layers=cfg.mlp_layers, timesteps=timesteps,
               time_embedding=cfg.time_embedding, out_dim=out_factor * shape[0])


def _rbf_mlp(cfg: Any, shape: tuple[int, ...], timesteps: int, out_factor: int) -> nn.Module:
    return RBFMLP(dim=shape[0], hidden=cfg.mlp_hidden, timesteps=timesteps, learn_sigma=out_factor == 2)


def _unet(cfg: Any, shape: tuple[int, ...], timesteps: int, out_factor: int) -> nn.Module:
    channels, image_size, _ = shape
    return UNet(in_channels=channels, out_channels=out_factor * channels, image_size=image_size,
                base_channels=cfg.base_channels, channel_mult=cfg.channel_mult, num_res_blocks=cfg.num_res_blocks,
                attn_resolutions=cfg.attn_resolutions, dropout=cfg.dropout, num_heads=cfg.num_heads)


def _shufflenet_unet(cfg: Any, shape: tuple[int, ...], timesteps: int, out_factor: int) -> nn.Module:
    channels, image_size, _ = shape
    return ShuffleUNet(in_channels=channels, out_channels=out_factor * channels, image_size=image_size,
                       base_channels=cfg.base_channels, channel_mult=cfg.channel_mult,
                       num_res_blocks=cfg.num_res_blocks, dropout=cfg.dropout, timesteps=timesteps,
                       time_embedding=cfg.time_embedding)


_BUILDERS: dict[str, Callable[[Any, tuple[int, ...], int, int], nn.Module]] = {
    "mlp": _mlp, "rbf_mlp": _rbf_mlp, "unet": _unet, "shufflenet_unet": _shufflenet_unet,
}


def _network_name(name: str, data_shape: tuple[int, ...]) -> str:
    """The network ``model.name`` asks for (``auto`` resolved), checked against the data."""
    if name not in MODEL_NAMES:
        raise ConfigError(f"model.name={name!r} is not one of {', '.join(map(repr, MODEL_NAMES))}")
    if len(data_shape) == 1:
        kind, fitting = "vector", VECTOR_NETWORKS
    elif len(data_shape) == 3:
        kind, fitting = "image", IMAGE_NETWORKS
        if data_shape[1] != data_shape[2]:
            raise ConfigError(f"the U-Net needs square images, got data shape {data_shape}")
    else:
        raise ConfigError(f"data shape {data_shape} is neither (D,) vectors nor (C, H, W) images")
    network = fitting[0] if name == "auto" else name
    if network not in fitting:
        fits = ", ".join(repr(n) for n in reversed(fitting)) + " or 'auto'"
        raise ConfigError(f"model.name={name!r} does not fit {kind} data of shape {data_shape}; use {fits}")
    return network


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters in ``model``."""
    return sum(p.numel() for p in model.parameters())
