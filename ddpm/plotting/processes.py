"""The diffusion processes as strips of snapshots: the reverse (generative) process of any sampler
and the forward (noising) process ``q(x_t | x_0)``, as image rows or scatter panels."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ddpm.plotting._common import DPI, ArrayLike, _check_images, _check_vectors, _data_kind, _to_numpy
from ddpm.plotting._scatter import _optional_vectors, _scatter_panel, _square_limits
from ddpm.plotting.grids import GRID_PADDING, _grid_pixels, _image_figure, _show_grid, images_to_uint8

STRIP_CELL_PIXELS = 104  # minimum cell size in process strips (about 0.8 in at DPI)
MAX_PANELS_PER_ROW = 5


def _strip_ticks(ax: Axes, n_cols: int, cell_px: int, labels: Sequence[str]) -> None:
    """Put one x tick label under the centre of each grid column."""
    centres = [GRID_PADDING + c * (cell_px + GRID_PADDING) + cell_px / 2 - 0.5 for c in range(n_cols)]
    ax.set_xticks(centres, labels)
    ax.set_yticks([])
    ax.tick_params(axis="x", length=0, labelsize=8)
    for side in ax.spines.values():
        side.set_visible(False)


def _pick_columns(n: int, max_columns: int) -> np.ndarray:
    """Indices of at most ``max_columns`` evenly spread items, always first and last."""
    if n <= max_columns:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_columns)).astype(int))


def _image_strip_figure(
    frames: np.ndarray,
    num_levels: int,
    labels: Sequence[str],
    title: str,
    xlabel: str,
) -> Figure:
    """``frames`` ``[S, n, C, H, W]`` -> figure with rows = examples, columns = frames."""
    n_cols, n_rows = frames.shape[0], frames.shape[1]
    _, _, channels, height, width = frames.shape
    # Row-major order for the grid: example 0 at every step, then example 1, ...
    tiles = frames.transpose(1, 0, 2, 3, 4).reshape(n_rows * n_cols, channels, height, width)
    pixels = images_to_uint8(tiles, num_levels)
    # Columns carry a t label (two lines for the forward process): ~0.8 in per column.
    scale = max(1, math.ceil(STRIP_CELL_PIXELS / max(height, width)))
    grid = _grid_pixels(pixels, nrow=n_cols, scale=scale)
    label_lines = max(label.count("\n") + 1 for label in labels)
    fig, ax = _image_figure(grid, top_in=0.5, bottom_in=0.5 + 0.15 * label_lines, side_in=0.4, min_width_in=7.0)
    _show_grid(ax, grid)
    _strip_ticks(ax, n_cols, width * scale, labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("examples")
    ax.set_title(title)
    return fig


def _vector_strip_figure(
    frames: Sequence[np.ndarray],
    panel_titles: Sequence[str],
    title: str,
    reference: np.ndarray | None,
) -> Figure:
    """One scatter panel per frame, shared square limits."""
    arrays = list(frames) + ([reference] if reference is not None else [])
    xlim, ylim = _square_limits(arrays, [True] * len(frames) + [False] * (reference is not None))
    n = len(frames)
    # Wrap after MAX_PANELS_PER_ROW panels: one long row of 9+ panels is unreadable.
    n_cols = min(n, MAX_PANELS_PER_ROW)
    n_rows = math.ceil(n / n_cols)
    fig = Figure(figsize=(2.6 * n_cols + 0.5, 2.9 * n_rows + 0.5), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, sharex=True, sharey=True, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_visible(False)
            continue
        _scatter_panel(ax, frames[i], xlim, ylim, reference=reference)
        ax.set_title(panel_titles[i], fontsize=9)
        # x tick labels only where no panel sits below (the last row may be partial).
        has_panel_below = i + n_cols < n
        ax.tick_params(labelsize=7, labelbottom=not has_panel_below)
        if not has_panel_below:
            ax.set_xlabel(r"$x_1$ (model units)", fontsize=8)
        if i % n_cols == 0:
            ax.set_ylabel(r"$x_2$ (model units)", fontsize=8)
    fig.suptitle(title)
    return fig


# The sampler's trajectory strip: its title per sampler (ancestral: reverse_process_figure's own).
SAMPLER_TITLES = {
    "ddim": "DDIM (Song et al. 2021): noise to sample",
    "pc": "Predictor-corrector sampling of the reverse SDE: noise (t = 1) to sample",
    "ode": "Probability-flow ODE: noise (t = 1) to sample",
    "ald": "Annealed Langevin dynamics: from the largest noise level to the smallest, then denoised",
}


def reverse_process_figure(
    trajectory: ArrayLike,
    steps: ArrayLike,
    meta: Mapping[str, Any],
    reference: ArrayLike | None = None,
    max_examples: int = 8,
    max_columns: int = 10,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Snapshots of the reverse (generative) process ``x_T -> x_0``.

    Args:
        trajectory: ``[S, n, ...]`` snapshots in model space (``[S, n, C, H, W]`` images
            or ``[S, n, 2]`` vectors), one per entry of ``steps``.
        steps: ``[S]`` ints, the paper timestep of each snapshot = number of reverse steps
            remaining (``T`` for the initial noise, ``0`` for the final sample).
        meta: ``{"kind": "image"|"vector", "num_levels": K}``.
        reference: vectors only: held-out data ``[M, 2]`` drawn faintly in every panel.
        max_examples: images only: at most this many rows (examples).
        max_columns: at most this many snapshots, evenly spread, first and last kept.
        labels: ``[S]`` names of the snapshots for samplers without DDPM's timesteps (a score
            sampler's time t, NCSN's noise level); default ``t=<step>``.
        title: the figure's title; default DDPM's reverse process.
    """
    kind, num_levels = _data_kind(meta)
    traj = _to_numpy(trajectory)
    step_values = _to_numpy(steps, dtype=np.int64).reshape(-1)
    if traj.ndim < 3 or traj.shape[0] != len(step_values):
        raise ValueError(
            f"trajectory must be [S, n, ...] with S = len(steps) = {len(step_values)}, got shape {tuple(traj.shape)}"
        )
    if labels is not None and len(labels) != len(step_values):
        raise ValueError(f"labels must name the {len(step_values)} snapshots, got {len(labels)}")
    columns = _pick_columns(len(step_values), max_columns)
    names = [f"t={s}" for s in step_values] if labels is None else [str(label) for label in labels]
    traj, names = traj[columns], [names[i] for i in columns]
    if title is None:
        title = r"Reverse process $p_\theta(x_{t-1} \mid x_t)$: noise ($t=T$) to sample ($t=0$)"
    axis = "timestep t (reverse steps remaining)" if labels is None else "from noise to sample"
    if kind == "image":
        if traj.ndim != 5:
            raise ValueError(f"image trajectory must be [S, n, C, H, W], got shape {tuple(traj.shape)}")
        frames = traj[:, :max_examples]
        _check_images(frames[0], "trajectory[0]")
        return _image_strip_figure(frames, num_levels, names, title, axis)
    for i, frame in enumerate(traj):
        _check_vectors(frame, f"trajectory[{i}]")
    return _vector_strip_figure(list(traj), names, title, _optional_vectors(reference, "reference"))


def _forward_steps(steps: ArrayLike | None, num_timesteps: int) -> np.ndarray:
    """Code indices to show: the given ones (checked), or 8 evenly spread including 0 and T - 1."""
    if steps is None:
        return np.unique(np.round(np.linspace(0, num_timesteps - 1, min(8, num_timesteps))).astype(np.int64))
    idx = _to_numpy(steps, dtype=np.int64).reshape(-1)
    bad = idx[(idx < 0) | (idx >= num_timesteps)]
    if len(bad):
        raise ValueError(
            f"steps must be code indices in 0..{num_timesteps - 1} (T = {num_timesteps}), got {bad.tolist()}"
        )
    return idx


def forward_process_figure(
    x0: ArrayLike,
    alphas_cumprod: ArrayLike,
    meta: Mapping[str, Any],
    steps: ArrayLike | None = None,
    seed: int = 0,
    num_examples: int = 4,
) -> Figure:
    """Samples of the forward (noising) process ``q(x_t | x_0)`` at a few timesteps.

    ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (Ho et al. eq. 4), drawn here with
    NumPy from ``numpy.random.default_rng(seed)``; one ``eps`` per example is shared by
    all timesteps, so each row (or point) fades coherently into noise. The first
    column/panel shows the data ``x_0``.

    Args:
        x0: data in model space, ``[N, C, H, W]`` images or ``[N, 2]`` vectors.
        alphas_cumprod: ``[T]``; ``alphas_cumprod[i]`` is the paper's ``abar_{i+1}``.
        meta: ``{"kind": "image"|"vector", "num_levels": K}``.
        steps: code indices in ``0..T-1`` to show (labelled with the paper's ``t = i + 1``);
            default 8 evenly spread indices including ``0`` and ``T - 1``.
        seed: seed of the noise generator.
        num_examples: images only: number of example rows.
    """
    kind, num_levels = _data_kind(meta)
    x = _to_numpy(x0)
    abar = _to_numpy(alphas_cumprod).reshape(-1)
    if len(abar) == 0 or not np.all((abar >= 0) & (abar <= 1)):
        raise ValueError(f"alphas_cumprod must be a non-empty [T] array in [0, 1], got shape {tuple(abar.shape)}")
    idx = _forward_steps(steps, len(abar))
    if kind == "image":
        _check_images(x, "x0")
        x = x[:num_examples]
    else:
        _check_vectors(x, "x0")
    eps = np.random.default_rng(seed).standard_normal(x.shape)
    # Ho et al. eq. 4: q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).
    frames = [x] + [math.sqrt(abar[i]) * x + math.sqrt(1.0 - abar[i]) * eps for i in idx]
    labels = ["t=0\n(data)"] + [rf"t={i + 1}" + "\n" + rf"$\bar\alpha$={abar[i]:.2g}" for i in idx]
    title = r"Forward process $q(x_t \mid x_0)$: data ($t=0$) to noise ($t=T$" + f" = {len(abar)})"
    if kind == "image":
        return _image_strip_figure(np.stack(frames), num_levels, labels, title, "timestep t")
    return _vector_strip_figure(frames, labels, title, None)
