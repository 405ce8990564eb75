"""Images as pixel-exact grids: the display pixels of model-space images, the grid PNG of the
sample stage and the samples figure (a grid, or a scatter of 2-D points)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from ddpm.io import atomic_path
from ddpm.plotting._common import (
    DPI,
    ArrayLike,
    PathLike,
    _check_images,
    _check_num_levels,
    _check_vectors,
    _data_kind,
    _to_numpy,
)
from ddpm.plotting._scatter import _marker_size, _optional_vectors, _scatter_panel, _square_limits

# Nearest-neighbour upscaling target: each image is shown at least this many pixels on
# its long side, so an 8x8 digit becomes a visible 64x64 block image.
MIN_DISPLAY_PIXELS = 64
SAMPLES_MIN_GRID_PIXELS = 480  # minimum width of the samples figure's grid
GRID_PADDING = 2  # pixels between images in a grid (after upscaling)
GRID_PAD_VALUE = 255  # white separators: visible against the black digit/MNIST background


def _auto_scale(height: int, width: int) -> int:
    return max(1, math.ceil(MIN_DISPLAY_PIXELS / max(height, width)))


def _grid_pixels(images: np.ndarray, nrow: int, scale: int) -> np.ndarray:
    """Tile uint8 images ``[N, C, H, W]`` into ``[H', W']`` (C=1) or ``[H', W', 3]`` (C=3).

    ``nrow`` images per row, each upscaled ``scale`` times (nearest neighbour) and framed by
    ``GRID_PADDING`` pixels of ``GRID_PAD_VALUE``: torchvision.utils.make_grid's layout, pixel
    for pixel (tested against it), written here because importing torchvision loads
    torchvision.ops and with it torch._dynamo, which would add to the start of every sample and
    plot stage (benchmarks/README.md has the figure). Unlike make_grid, a single image is framed
    too, so the strip's tick positions hold for any count.
    """
    n, channels, height, width = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    cell_h, cell_w = height * scale + GRID_PADDING, width * scale + GRID_PADDING
    grid = np.full(
        (rows * cell_h + GRID_PADDING, cols * cell_w + GRID_PADDING, channels), GRID_PAD_VALUE, dtype=np.uint8
    )
    big = images.transpose(0, 2, 3, 1).repeat(scale, axis=1).repeat(scale, axis=2)
    for i, image in enumerate(big):
        top, left = (i // cols) * cell_h + GRID_PADDING, (i % cols) * cell_w + GRID_PADDING
        grid[top : top + height * scale, left : left + width * scale] = image
    return grid[..., 0] if channels == 1 else grid


def _show_grid(ax: Axes, grid: np.ndarray) -> None:
    if grid.ndim == 2:
        ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")


def _image_figure(
    grid: np.ndarray,
    top_in: float,
    bottom_in: float,
    side_in: float,
    min_width_in: float,
) -> tuple[Figure, Axes]:
    """A figure whose axes show ``grid`` at exactly one figure pixel per grid pixel.

    No layout engine: the axes rectangle is placed by hand (centred, with the given
    margins in inches for title, tick labels and axis labels), so the nearest-neighbour
    upscaled images are not resampled a second time into uneven blocks.
    """
    height_px, width_px = grid.shape[:2]
    axes_w, axes_h = width_px / DPI, height_px / DPI
    fig_w = max(axes_w + 2 * side_in, min_width_in)
    fig_h = axes_h + top_in + bottom_in
    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI)
    left = (fig_w - axes_w) / 2
    ax = fig.add_axes((left / fig_w, bottom_in / fig_h, axes_w / fig_w, axes_h / fig_h))
    return fig, ax


def images_to_uint8(x: ArrayLike, num_levels: int) -> np.ndarray:
    """Map images in model space to display pixels.

    Args:
        x: ``[N, C, H, W]`` in model space, where grey level ``v in {0..K-1}`` is
            ``x = 2 v / (K - 1) - 1``. Values outside ``[-1, 1]`` (noisy ``x_t``,
            unclipped samples) are clipped.
        num_levels: ``K``, the number of grey levels of the data.

    Returns:
        uint8 ``[N, C, H, W]``: ``x`` rounded to the nearest of the K levels, then
        stretched to ``0..255`` (level ``v`` -> ``round(255 v / (K - 1))``, halves
        rounded up), so data with few levels is still shown at full contrast.
        NaNs are shown as 0.
    """
    k = _check_num_levels(num_levels)
    x = _to_numpy(x)
    _check_images(x, "x")
    x = np.nan_to_num(x, nan=-1.0, posinf=1.0, neginf=-1.0)
    levels = np.rint((np.clip(x, -1.0, 1.0) + 1.0) / 2.0 * (k - 1))
    return np.floor(levels * 255.0 / (k - 1) + 0.5).astype(np.uint8)


def save_image_grid(
    x: ArrayLike,
    num_levels: int,
    path: PathLike,
    nrow: int | None = None,
    scale: int | None = None,
) -> Path:
    """Write images in model space as one pixel-exact grid PNG (no axes, no title).

    Args:
        x: ``[N, C, H, W]`` in model space ``[-1, 1]``, ``C`` in ``{1, 3}`` (1 = greyscale).
        num_levels: ``K`` grey levels of the data (see :func:`images_to_uint8`).
        path: target ``.png``; written atomically.
        nrow: images per grid row; default ``ceil(sqrt(N))`` (a square-ish grid).
        scale: integer nearest-neighbour upscaling factor; default makes each image at
            least 64 pixels on its long side (8x8 digits -> 64x64, 32x32 -> 64x64).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    pixels = images_to_uint8(x, num_levels)
    n, _, height, width = pixels.shape
    nrow = math.ceil(math.sqrt(n)) if nrow is None else int(nrow)
    scale = _auto_scale(height, width) if scale is None else int(scale)
    if nrow < 1 or scale < 1:
        raise ValueError(f"nrow and scale must be positive integers, got nrow={nrow!r}, scale={scale!r}")
    grid = _grid_pixels(pixels, nrow=nrow, scale=scale)
    with atomic_path(path) as tmp:
        Image.fromarray(grid, mode="L" if grid.ndim == 2 else "RGB").save(tmp, format="PNG")
    return Path(path)


def _image_samples_figure(x: np.ndarray, num_levels: int, max_images: int) -> Figure:
    shown = x[:max_images]
    pixels = images_to_uint8(shown, num_levels)
    _, channels, height, width = pixels.shape
    nrow = math.ceil(math.sqrt(len(shown)))
    # A few large images or many small ones: either way the grid is at least ~480 px wide.
    scale = max(_auto_scale(height, width), math.ceil(SAMPLES_MIN_GRID_PIXELS / (nrow * width)))
    grid = _grid_pixels(pixels, nrow=nrow, scale=scale)
    fig, ax = _image_figure(grid, top_in=0.45, bottom_in=0.12, side_in=0.12, min_width_in=4.8)
    _show_grid(ax, grid)
    ax.set_axis_off()
    count = f"{len(shown)} of {len(x)}" if len(shown) < len(x) else f"{len(x)}"
    ax.set_title(
        f"Samples: {count} image{'s' if len(x) > 1 else ''}, {height}x{width}x{channels}, K = {num_levels} levels"
    )
    return fig


def _vector_samples_figure(x: np.ndarray, reference: np.ndarray | None) -> Figure:
    arrays, robust = [x], [True]
    if reference is not None:
        arrays, robust = [x, reference], [True, False]
    xlim, ylim = _square_limits(arrays, robust)
    fig = Figure(figsize=(5.6, 5.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    _scatter_panel(ax, x, xlim, ylim, reference=reference, label=f"samples (n={len(x)})")
    ax.set_xlabel(r"$x_1$ (model units)")
    ax.set_ylabel(r"$x_2$ (model units)")
    ax.set_title("Samples" + (" vs held-out data" if reference is not None else ""))
    ax.legend(loc="upper right", fontsize=8, markerscale=max(1.0, 3.0 / math.sqrt(_marker_size(len(x)))))
    return fig


def samples_figure(
    samples: ArrayLike, meta: Mapping[str, Any], reference: ArrayLike | None = None, max_images: int = 100
) -> Figure:
    """Generated samples: a pixel-exact image grid, or a scatter of 2-D points.

    Args:
        samples: images ``[N, C, H, W]`` or points ``[N, 2]``, in model space.
        meta: data description with ``"kind"`` (``"image"`` or ``"vector"``) and, for
            images, ``"num_levels"``.
        reference: vectors only: held-out data ``[M, 2]`` drawn faintly behind the samples.
        max_images: images only: at most this many (the first ones) are shown.
    """
    kind, num_levels = _data_kind(meta)
    x = _to_numpy(samples)
    if kind == "image":
        _check_images(x, "samples")
        return _image_samples_figure(x, num_levels, max_images)
    _check_vectors(x, "samples")
    return _vector_samples_figure(x, _optional_vectors(reference, "reference"))
