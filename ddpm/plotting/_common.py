"""What every figure module shares: input types, the checks of arrays and ``meta``, colours,
and :func:`save_figure`, the one way a figure becomes a PNG file."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from ddpm.io import atomic_path

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]
PathLike = str | os.PathLike

DPI = 130
SAMPLE_COLOR = "tab:blue"
REFERENCE_COLOR = "0.55"
DATA_KINDS = ("image", "vector")


def _to_numpy(x: ArrayLike, dtype: Any = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_num_levels(num_levels: Any) -> int:
    if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)) or num_levels < 2:
        raise ValueError(
            "num_levels must be an integer >= 2 (e.g. 17 for sklearn digits, "
            f"256 for MNIST/CIFAR-10), got {num_levels!r}"
        )
    return int(num_levels)


def _check_images(x: np.ndarray, name: str) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be images shaped [N, C, H, W] with C in (1, 3), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); nothing to plot")


def _check_vectors(x: np.ndarray, name: str) -> None:
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"{name} must be 2-D points shaped [N, 2], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); nothing to plot")


def _data_kind(meta: Mapping[str, Any]) -> tuple[str, int | None]:
    """Validate ``meta`` and return ``(kind, num_levels)`` (``num_levels`` only for images)."""
    kind = meta.get("kind")
    if kind not in DATA_KINDS:
        raise ValueError(f"meta['kind'] must be one of {DATA_KINDS}, got {kind!r}")
    if kind == "image":
        return kind, _check_num_levels(meta.get("num_levels"))
    return kind, None


def save_figure(fig: Figure, path: PathLike) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI` to ``path`` atomically (a failed or interrupted write
    leaves no partial file, and an old file is kept) and return ``path`` as a :class:`~pathlib.Path`.

    The figures here live on their own Agg canvases, never registered with ``pyplot``, so there
    is no figure manager to close: the figure is freed once the caller drops it.
    """
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)
