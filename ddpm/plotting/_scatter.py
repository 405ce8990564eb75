"""Scatter panels of 2-D points (the Swiss roll), shared by the samples figure and the process
strips so that both frame and mark the points alike."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes

from ddpm.plotting._common import REFERENCE_COLOR, SAMPLE_COLOR, ArrayLike, _check_vectors, _to_numpy


def _square_limits(
    arrays: Sequence[np.ndarray], robust: Sequence[bool]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Shared square axis limits covering all arrays.

    Arrays flagged ``robust`` (model output, which may have diverged) are covered up to
    1.5x the half-width of their central 99% around its centre: every point of a sane
    cloud is shown, while a few far-off points cannot shrink the rest to a dot.
    """
    lows, highs = [], []
    for a, is_robust in zip(arrays, robust, strict=True):
        finite = a[np.all(np.isfinite(a), axis=1)]
        if len(finite) == 0:
            continue
        low, high = finite.min(axis=0), finite.max(axis=0)
        if is_robust:
            q_low, q_high = np.percentile(finite, [0.5, 99.5], axis=0)
            centre, half = (q_low + q_high) / 2, (q_high - q_low) / 2
            low, high = np.maximum(low, centre - 1.5 * half), np.minimum(high, centre + 1.5 * half)
        lows.append(low)
        highs.append(high)
    if not lows:
        return (-1.0, 1.0), (-1.0, 1.0)
    low, high = np.min(lows, axis=0), np.max(highs, axis=0)
    centre = (low + high) / 2
    half = max(float(np.max(high - low)) / 2 * 1.05, 1e-3)
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


def _count_outside(points: np.ndarray, xlim: tuple[float, float], ylim: tuple[float, float]) -> int:
    with np.errstate(invalid="ignore"):
        inside = (
            (points[:, 0] >= xlim[0])
            & (points[:, 0] <= xlim[1])
            & (points[:, 1] >= ylim[0])
            & (points[:, 1] <= ylim[1])
        )
    return int(np.sum(~inside))


def _marker_size(n: int) -> float:
    return float(np.clip(3000.0 / max(n, 1), 1.0, 16.0))


def _scatter_panel(
    ax: Axes,
    points: np.ndarray,
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    reference: np.ndarray | None = None,
    label: str | None = None,
) -> None:
    if reference is not None:
        ax.scatter(
            reference[:, 0],
            reference[:, 1],
            s=_marker_size(len(reference)),
            c=REFERENCE_COLOR,
            alpha=0.4,
            linewidths=0,
            label=f"held-out data (n={len(reference)})" if label else None,
        )
    ax.scatter(
        points[:, 0],
        points[:, 1],
        s=_marker_size(len(points)),
        c=SAMPLE_COLOR,
        alpha=0.7,
        linewidths=0,
        label=label,
    )
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    ax.set_aspect("equal", adjustable="box")
    ax.grid(True, alpha=0.25)
    outside = _count_outside(points, xlim, ylim)
    if outside:
        ax.text(
            0.02,
            0.02,
            f"{outside} point(s) outside view",
            transform=ax.transAxes,
            fontsize=7,
            color="0.3",
            va="bottom",
        )


def _optional_vectors(points: ArrayLike | None, name: str) -> np.ndarray | None:
    if points is None:
        return None
    points = _to_numpy(points)
    _check_vectors(points, name)
    return points
