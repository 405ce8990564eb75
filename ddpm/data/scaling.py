"""The K-level scaling between stored grey levels ``v in {0..K-1}`` and model space
``x = 2 v / (K - 1) - 1`` in [-1, 1] (the grid the discretized decoder integrates over)."""

from __future__ import annotations

import functools
from typing import TypeVar

import numpy as np
import torch

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def to_model_space(levels: ArrayOrTensor, num_levels: int) -> ArrayOrTensor:
    """Map integer grey levels ``v in {0..K-1}`` to float32 ``x = 2 v / (K - 1) - 1``.

    Returns a NumPy array for NumPy input (or anything array-like), a tensor on the same
    device for a tensor. Each value is the float32 nearest to the exact ``x``, so 0 and
    K - 1 map to exactly -1 and 1.
    """
    _check_num_levels(num_levels)
    table = _level_table(num_levels)
    if isinstance(levels, torch.Tensor):
        if levels.is_floating_point() or levels.is_complex() or levels.dtype == torch.bool:
            raise TypeError(f"levels must hold integer grey levels, got dtype {levels.dtype}")
        if levels.numel():
            _check_level_range(int(levels.min()), int(levels.max()), num_levels)
        return torch.tensor(table, device=levels.device)[levels.long()]
    levels = np.asarray(levels)
    if not np.issubdtype(levels.dtype, np.integer):
        raise TypeError(f"levels must hold integer grey levels, got dtype {levels.dtype}")
    if levels.size:
        _check_level_range(int(levels.min()), int(levels.max()), num_levels)
    return table[levels]


def from_model_space(x: ArrayOrTensor, num_levels: int) -> ArrayOrTensor:
    """Map model-space values back to the nearest grey level, clipped to 0..K-1.

    The inverse of to_model_space on its outputs. Returns uint8 levels for K <= 256,
    int64 otherwise; a NumPy array for NumPy input, a tensor on the same device for a tensor.
    """
    _check_num_levels(num_levels)
    half_range = (num_levels - 1) / 2
    if isinstance(x, torch.Tensor):
        # Low-precision floats cannot resolve 256 levels near +-1; round in float32 or better.
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        if bool(torch.isnan(x).any()):
            raise ValueError("x contains NaN, which has no grey level")
        levels = torch.round((x + 1) * half_range).clamp_(0, num_levels - 1)
        return levels.to(torch.uint8 if num_levels <= 256 else torch.int64)
    x = np.asarray(x)
    x = x.astype(np.promote_types(x.dtype, np.float32), copy=False)
    if np.isnan(x).any():
        raise ValueError("x contains NaN, which has no grey level")
    levels = np.clip(np.rint((x + 1) * half_range), 0, num_levels - 1)
    return levels.astype(np.uint8 if num_levels <= 256 else np.int64)


@functools.cache
def _level_table(num_levels: int) -> np.ndarray:
    # (2 v - (K - 1)) is an exact integer in float32, so one IEEE division gives the float32
    # nearest to 2 v / (K - 1) - 1. Indexing this table, rather than dividing on each backend
    # (some turn division by a scalar into a multiplication by its reciprocal), keeps NumPy
    # and torch results bit-identical everywhere.
    v = np.arange(num_levels, dtype=np.float32)
    table = (2 * v - (num_levels - 1)) / np.float32(num_levels - 1)
    table.setflags(write=False)
    return table


def _check_num_levels(num_levels: int) -> None:
    if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)) or num_levels < 2:
        raise ValueError(f"num_levels: bad value {num_levels!r}; accepted: an integer >= 2")


def _check_level_range(low: int, high: int, num_levels: int) -> None:
    if low < 0 or high > num_levels - 1:
        raise ValueError(
            f"grey levels must lie in 0..{num_levels - 1} for num_levels={num_levels}, "
            f"found values from {low} to {high}"
        )
