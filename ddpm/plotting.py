"""Figures for reports, built from arrays and report files (never from live models).

Each ``*_figure`` function returns a standalone :class:`matplotlib.figure.Figure` (Agg
canvas), so importing this module changes no global matplotlib state (no ``pyplot``, no
``matplotlib.use``) and a caller can read back what is drawn; the matching ``plot_*``
function writes it as a PNG atomically through :func:`ddpm.io.atomic_path`: a failed or
interrupted write leaves no partial file. Report files that are malformed raise
:class:`ddpm.errors.DataError`; arrays of the wrong shape are a caller's bug (``ValueError``).

Conventions shared with the rest of the package (see DESIGN.md):

- Images live in model space ``[-1, 1]``: grey level ``v in {0..K-1}`` is
  ``x = 2 v / (K - 1) - 1``; arrays are ``[N, C, H, W]`` with ``C`` in ``{1, 3}``.
- Vector data (the Swiss roll) is ``[N, 2]``.
- Timestep labels use the paper's index: ``t = 0`` is data, ``t = T`` is pure noise.
  Code indices ``0..T-1`` (``betas[t]``, ``alphas_cumprod[t]``) stand for paper ``t = 1..T``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from ddpm.errors import DataError
from ddpm.io import atomic_path

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]
PathLike = str | os.PathLike

DPI = 130
# Nearest-neighbour upscaling target: each image is shown at least this many pixels on
# its long side, so an 8x8 digit becomes a visible 64x64 block image.
MIN_DISPLAY_PIXELS = 64
SAMPLES_MIN_GRID_PIXELS = 480  # minimum width of the samples figure's grid
STRIP_CELL_PIXELS = 104  # minimum cell size in process strips (about 0.8 in at DPI)
GRID_PADDING = 2  # pixels between images in a grid (after upscaling)
GRID_PAD_VALUE = 255  # white separators: visible against the black digit/MNIST background
SAMPLE_COLOR = "tab:blue"
REFERENCE_COLOR = "0.55"
DECODER_COLOR = "tab:red"
MAX_PANELS_PER_ROW = 5
BOUND_UNITS = ("bits/dim", "nats/dim")
DATA_KINDS = ("image", "vector")


# --------------------------------------------------------------------------- helpers


def _to_numpy(x: ArrayLike, dtype: Any = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_num_levels(num_levels: Any) -> int:
    if (
        isinstance(num_levels, bool)
        or not isinstance(num_levels, (int, np.integer))
        or num_levels < 2
    ):
        raise ValueError(
            "num_levels must be an integer >= 2 (e.g. 17 for sklearn digits, "
            f"256 for MNIST/CIFAR-10), got {num_levels!r}"
        )
    return int(num_levels)


def _check_images(x: np.ndarray, name: str) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"{name} must be images shaped [N, C, H, W] with C in (1, 3), "
            f"got shape {tuple(x.shape)}"
        )
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


def _auto_scale(height: int, width: int) -> int:
    return max(1, math.ceil(MIN_DISPLAY_PIXELS / max(height, width)))


def _grid_pixels(images: np.ndarray, nrow: int, scale: int) -> np.ndarray:
    """Tile uint8 images ``[N, C, H, W]`` into ``[H', W']`` (C=1) or ``[H', W', 3]`` (C=3).

    ``nrow`` images per row, each upscaled ``scale`` times (nearest neighbour) and framed by
    ``GRID_PADDING`` pixels of ``GRID_PAD_VALUE``: torchvision.utils.make_grid's layout, pixel
    for pixel (tested against it), written here because importing torchvision loads
    torchvision.ops and with it torch._dynamo, about 3 s of every sample and plot stage on a
    small CPU. Unlike make_grid, a single image is framed too, so the strip's tick positions
    hold for any count.
    """
    n, channels, height, width = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    cell_h, cell_w = height * scale + GRID_PADDING, width * scale + GRID_PADDING
    grid = np.full((rows * cell_h + GRID_PADDING, cols * cell_w + GRID_PADDING, channels), GRID_PAD_VALUE,
                   dtype=np.uint8)
    big = images.transpose(0, 2, 3, 1).repeat(scale, axis=1).repeat(scale, axis=2)
    for i, image in enumerate(big):
        top, left = (i // cols) * cell_h + GRID_PADDING, (i % cols) * cell_w + GRID_PADDING
        grid[top : top + height * scale, left : left + width * scale] = image
    return grid[..., 0] if channels == 1 else grid


def _save_figure(fig: Figure, path: PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


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


def _strip_ticks(ax: Axes, n_cols: int, cell_px: int, labels: Sequence[str]) -> None:
    """Put one x tick label under the centre of each grid column."""
    centres = [
        GRID_PADDING + c * (cell_px + GRID_PADDING) + cell_px / 2 - 0.5 for c in range(n_cols)
    ]
    ax.set_xticks(centres, labels)
    ax.set_yticks([])
    ax.tick_params(axis="x", length=0, labelsize=8)
    for side in ax.spines.values():
        side.set_visible(False)


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


def _pick_columns(n: int, max_columns: int) -> np.ndarray:
    """Indices of at most ``max_columns`` evenly spread items, always first and last."""
    if n <= max_columns:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_columns)).astype(int))


def _read_csv_columns(csv_path: PathLike, required: Sequence[str]) -> dict[str, np.ndarray]:
    """Read the ``required`` numeric columns of a CSV with a header line (blank cells -> NaN).

    A report file that is malformed (edited by hand, or not a report) raises ``DataError``.
    """
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(
                f"{csv_path}: missing column(s) {missing}; header is {header}, expected at least {list(required)}"
            )
        reader.fieldnames = header
        rows = [(line_no, row) for line_no, row in enumerate(reader, start=2)]
    if not rows:
        raise DataError(f"{csv_path}: no data rows after the header")
    return {c: np.array([_csv_number(csv_path, line_no, c, row.get(c)) for line_no, row in rows]) for c in required}


def _csv_number(csv_path: PathLike, line_no: int, column: str, cell: str | None) -> float:
    cell = (cell or "").strip()
    try:
        return float(cell) if cell else math.nan
    except ValueError:
        raise DataError(f"{csv_path}:{line_no}: column {column!r} has non-numeric value {cell!r}") from None


# --------------------------------------------------------------------------- images


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
        raise ValueError(
            f"nrow and scale must be positive integers, got nrow={nrow!r}, scale={scale!r}"
        )
    grid = _grid_pixels(pixels, nrow=nrow, scale=scale)
    with atomic_path(path) as tmp:
        Image.fromarray(grid, mode="L" if grid.ndim == 2 else "RGB").save(tmp, format="PNG")
    return Path(path)


# --------------------------------------------------------------------------- report curves


def _ema(values: np.ndarray, span: float) -> np.ndarray:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing)."""
    beta = 1.0 - 2.0 / (span + 1.0)
    out = np.empty_like(values)
    acc, weight = 0.0, 0.0
    for i, v in enumerate(values):
        acc = beta * acc + (1.0 - beta) * v
        weight = beta * weight + (1.0 - beta)
        out[i] = acc / weight
    return out


def _curve_figure(width_in: float, height_in: float) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def loss_figure(csv_path: PathLike, ylabel: str = "training loss (batch mean)") -> Figure:
    """The training loss curve from a CSV with a header and ``step``, ``loss`` columns.

    Other columns (learning rate, grad norm, ...) are ignored. The raw per-step loss is
    drawn faintly, with a bias-corrected EMA on top (span ~ 1/40 of the points, so the
    smoothing adapts to the run length); non-finite losses are dropped and counted in
    the title. The y axis is logarithmic when the positive losses span more than a decade.

    Args:
        csv_path: training log, e.g. ``reports/train/loss.csv``.
        ylabel: y-axis label (name the loss and its unit when known).
    """
    cols = _read_csv_columns(csv_path, ["step", "loss"])
    finite = np.isfinite(cols["step"]) & np.isfinite(cols["loss"])
    if not np.any(finite):
        raise DataError(f"{csv_path}: no finite (step, loss) rows to plot")
    order = np.argsort(cols["step"][finite], kind="stable")
    step, loss = cols["step"][finite][order], cols["loss"][finite][order]
    span = float(np.clip(len(loss) / 40.0, 1.0, 500.0))

    fig, ax = _curve_figure(7.0, 4.2)
    if span >= 2.0:
        smooth = _ema(loss, span)
        ax.plot(step, loss, color=SAMPLE_COLOR, alpha=0.3, linewidth=0.8, label="per step")
        ax.plot(step, smooth, color=SAMPLE_COLOR, linewidth=2.0, label=f"EMA (span {span:.0f} points)")
        final = f"final EMA {smooth[-1]:.4g}"
    else:  # too few points to smooth: show them as they are
        ax.plot(step, loss, color=SAMPLE_COLOR, marker="o", markersize=3, linewidth=1.5, label="per step")
        final = f"final {loss[-1]:.4g}"
    if np.all(loss > 0) and loss.max() / loss.min() > 10.0:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    dropped = int(np.sum(~finite))
    omitted = f"\n{dropped} non-finite value(s) omitted" if dropped else ""
    ax.set_title(f"Training loss ({len(loss)} points, {final}){omitted}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper right")
    return fig


def _read_bound_terms(csv_path: PathLike) -> dict[str, np.ndarray]:
    """The bound CSV's rows sorted by ``t``; ``se`` is the standard error with blanks as 0,
    ``has_se`` says where one was given."""
    cols = _read_csv_columns(csv_path, ["t", "term", "stderr"])
    order = np.argsort(cols["t"], kind="stable")
    t, term, stderr = cols["t"][order], cols["term"][order], cols["stderr"][order]
    return {"t": t, "term": term, "se": np.nan_to_num(stderr, nan=0.0), "has_se": np.isfinite(stderr)}


def _draw_kl_terms(ax: Axes, t: np.ndarray, kl: np.ndarray, se: np.ndarray, floor: float) -> None:
    """The KL terms ``L_{t-1}`` (paper ``t >= 2``) as a line with a +-1 standard-error band."""
    ax.plot(t, kl, color=SAMPLE_COLOR, marker="o" if len(t) <= 60 else None, markersize=3, linewidth=1.5,
            label=r"$L_{t-1}$ (KL terms, $t \geq 2$)")
    if np.any(se > 0):
        ax.fill_between(t, np.maximum(kl - se, floor), kl + se, color=SAMPLE_COLOR, alpha=0.25, linewidth=0,
                        label=r"$\pm 1$ std. error")


def _draw_decoder_term(ax: Axes, l0: float, se: float, has_se: bool, floor: float) -> None:
    """``L_0`` at ``t = 1``: a marker with error bar, or pinned to the bottom edge when it is
    not positive (a Gaussian log-density can exceed 0) and so cannot sit on a log axis."""
    label = rf"$L_0$ (decoder, $t=1$) = {l0:.4g}" + (rf" $\pm$ {se:.2g}" if has_se else "")
    if l0 > 0:
        ax.errorbar([1], [l0], yerr=[[min(se, l0 - floor)], [se]], fmt="D", color=DECODER_COLOR, markersize=7,
                    capsize=3, label=label)
    else:
        ax.plot([1], [floor], marker="v", color=DECODER_COLOR, markersize=10, linestyle="none", clip_on=False,
                zorder=5, label=label + " (off scale)")


def bound_terms_figure(csv_path: PathLike, unit: str) -> Figure:
    """The per-timestep terms of the variational bound (Ho et al. eq. 5).

    The CSV has header ``t,term,stderr`` with ``t = 1..T`` the paper's index: ``t = 1`` is
    the decoder term ``L_0`` and ``t >= 2`` the KL term ``L_{t-1}``; ``term`` is the mean
    contribution to the bound per dimension in ``unit`` and ``stderr`` its standard error
    (blank or NaN: no band). The prior term ``L_T`` is not part of this file.

    The KL terms are drawn as they are in the file on a log axis with a shaded +-1
    standard-error band; ``L_0`` is a separate red marker (see :func:`_draw_decoder_term`),
    its value and error in the legend. The legend title gives the sum of all rows.

    Args:
        csv_path: per-timestep terms written by the evaluate stage.
        unit: ``"bits/dim"`` (discrete data) or ``"nats/dim"`` (continuous data).
    """
    if unit not in BOUND_UNITS:
        raise ValueError(f"unit must be one of {BOUND_UNITS}, got {unit!r}")
    rows = _read_bound_terms(csv_path)
    t, term, se = rows["t"], rows["term"], rows["se"]
    is_decoder = t == 1
    shown = ~is_decoder & np.isfinite(term) & (term > 0)
    on_axis = shown | (is_decoder & np.isfinite(term) & (term > 0))
    if not np.any(on_axis):
        raise DataError(f"{csv_path}: no positive finite term to draw on a log axis")
    floor, ceiling = float(term[on_axis].min()) / 3.0, float((term + se)[on_axis].max()) * 2.0

    fig, ax = _curve_figure(7.5, 4.6)
    ax.set_yscale("log")
    if np.any(shown):
        _draw_kl_terms(ax, t[shown], term[shown], se[shown], floor)
    if np.any(is_decoder):
        first = np.flatnonzero(is_decoder)[0]
        _draw_decoder_term(ax, float(term[first]), float(se[first]), bool(rows["has_se"][first]), floor)
    ax.set_ylim(floor, ceiling)
    t_max = max(float(np.nanmax(t)), 2.0)
    margin = max(0.5, 0.015 * t_max)
    ax.set_xlim(1 - margin, t_max + margin)
    legend_title = f"sum of all {len(t)} terms = {float(np.nansum(term)):.4g} {unit}\n(prior $L_T$ not included)"
    skipped = int(np.sum(~is_decoder & ~shown))
    if skipped:
        legend_title += f"\n{skipped} non-positive KL term(s) not drawn"
    ax.legend(loc="best", fontsize=8, title=legend_title, title_fontsize=8, framealpha=0.9)
    ax.set_xlabel(r"timestep $t$ (paper index; $t=1$ is the decoder $L_0$)")
    ax.set_ylabel(f"mean term per dimension ({unit})")
    ax.set_title(f"Variational bound per timestep ({unit})")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", axis="y", alpha=0.08)
    return fig


def schedule_figure(betas: ArrayLike) -> Figure:
    """A noise schedule: ``beta_t``, ``alphas_cumprod`` (abar_t) and log SNR vs ``t``.

    Args:
        betas: ``[T]`` (float64), ``betas[i]`` is the paper's ``beta_{i+1}``.
    """
    betas = _to_numpy(betas)
    if betas.ndim != 1 or len(betas) == 0:
        raise ValueError(f"betas must be a non-empty 1-D array [T], got shape {tuple(betas.shape)}")
    if not np.all((betas > 0) & (betas <= 1)):
        raise ValueError(f"betas must lie in (0, 1], got min {betas.min()!r}, max {betas.max()!r}")
    t = np.arange(1, len(betas) + 1)
    alphas_cumprod = np.cumprod(1.0 - betas)
    with np.errstate(divide="ignore"):
        log_snr = np.log(alphas_cumprod) - np.log1p(-alphas_cumprod)  # log(abar / (1 - abar))

    fig = Figure(figsize=(12.0, 3.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [
        (betas, r"$\beta_t$", r"noise variance $\beta_t$"),
        (alphas_cumprod, r"$\bar\alpha_t$ (cumulative product of $1-\beta_s$)",
         r"signal variance fraction $\bar\alpha_t$"),
        (log_snr, r"$\log \mathrm{SNR}_t$", r"$\log(\bar\alpha_t / (1-\bar\alpha_t))$ (nats)"),
    ]
    for ax, (values, title, ylabel) in zip(axes, panels, strict=True):
        ax.plot(t, values, color=SAMPLE_COLOR, linewidth=1.8)
        ax.set_title(title)
        ax.set_xlabel(r"timestep $t$ (1..T)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.25)
    axes[1].set_ylim(-0.03, 1.03)
    axes[2].axhline(0.0, color="0.5", linewidth=0.8, linestyle="--")
    fig.suptitle(rf"Noise schedule (T = {len(betas)}, $\bar\alpha_T$ = {alphas_cumprod[-1]:.2e})")
    return fig


def sde_schedule_figure(t: ArrayLike, mean_coef: ArrayLike, std: ArrayLike, diffusion: ArrayLike,
                        title: str) -> Figure:
    """A continuous-time SDE's schedule against t in [0, 1]: the perturbation kernel
    N(mean_coef(t) x0, std(t)^2 I) and the diffusion coefficient g(t), std and g on a log axis."""
    t, mean_coef, std, g = (_to_numpy(a).reshape(-1) for a in (t, mean_coef, std, diffusion))
    if not len(t) == len(mean_coef) == len(std) == len(g) > 1:
        raise ValueError("t, mean_coef, std and diffusion must be 1-D arrays of the same length > 1")
    fig = Figure(figsize=(12.0, 3.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [(mean_coef, "mean coefficient of $x_0$", False), (std, r"std $\sigma(t)$ of the noise", True),
              (g, "diffusion coefficient $g(t)$", True)]
    for ax, (values, name, log) in zip(axes, panels, strict=True):
        ax.plot(t, values, color=SAMPLE_COLOR, linewidth=1.8)
        ax.set_title(name)
        ax.set_xlabel("time t")
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.25)
    fig.suptitle(title)
    return fig


def sigma_ladder_figure(sigmas: ArrayLike) -> Figure:
    """NCSN's noise levels (descending; level 0 the largest) on a log axis, with their ratio."""
    sigmas = _to_numpy(sigmas).reshape(-1)
    if len(sigmas) < 2 or not np.all(sigmas > 0):
        raise ValueError(f"sigmas must hold at least 2 positive levels, got {sigmas.tolist()[:4]}")
    fig = Figure(figsize=(6.5, 3.8), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.semilogy(np.arange(len(sigmas)), sigmas, "o-", color=SAMPLE_COLOR, markersize=3, linewidth=1.2)
    ax.set_xlabel("level i (annealed Langevin dynamics runs from 0 to L-1)")
    ax.set_ylabel(r"noise level $\sigma_i$")
    ax.grid(True, which="both", alpha=0.25)
    gamma = (sigmas[0] / sigmas[-1]) ** (1 / (len(sigmas) - 1))
    ax.set_title(rf"NCSN noise levels: L = {len(sigmas)}, $\sigma_1$ = {sigmas[0]:.4g}, "
                 rf"$\sigma_L$ = {sigmas[-1]:.3g}, ratio {gamma:.4g}")
    return fig


def plot_sde_schedule(t: ArrayLike, mean_coef: ArrayLike, std: ArrayLike, diffusion: ArrayLike, title: str,
                      png_path: PathLike) -> Path:
    """See :func:`sde_schedule_figure`."""
    return _save_figure(sde_schedule_figure(t, mean_coef, std, diffusion, title), png_path)


def plot_sigma_ladder(sigmas: ArrayLike, png_path: PathLike) -> Path:
    """See :func:`sigma_ladder_figure`."""
    return _save_figure(sigma_ladder_figure(sigmas), png_path)


# --------------------------------------------------------------------------- samples and processes


def _optional_vectors(points: ArrayLike | None, name: str) -> np.ndarray | None:
    if points is None:
        return None
    points = _to_numpy(points)
    _check_vectors(points, name)
    return points


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
    ax.set_title(f"Samples: {count} image{'s' if len(x) > 1 else ''}, "
                 f"{height}x{width}x{channels}, K = {num_levels} levels")
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
    fig, ax = _image_figure(
        grid, top_in=0.5, bottom_in=0.5 + 0.15 * label_lines, side_in=0.4, min_width_in=7.0
    )
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
    axes = np.atleast_1d(
        fig.subplots(n_rows, n_cols, sharex=True, sharey=True, squeeze=False)
    ).ravel()
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
            f"trajectory must be [S, n, ...] with S = len(steps) = {len(step_values)}, "
            f"got shape {tuple(traj.shape)}"
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
        raise ValueError(
            f"alphas_cumprod must be a non-empty [T] array in [0, 1], got shape {tuple(abar.shape)}"
        )
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


# --------------------------------------------------------------------------- sample quality

QUALITY_ID_COLUMNS = ("setting", "sampler", "nfe")


def _read_quality_rows(csv_path: PathLike) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """The quality stage's nfe.csv: (metric names, sampler of each row, numeric columns)."""
    with open(csv_path, newline="") as f:
        header = [h.strip() for h in (next(csv.reader(f), None) or [])]
    missing = [c for c in QUALITY_ID_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}; header is {header}")
    numeric = [c for c in header if c not in ("setting", "sampler")]
    cols = _read_csv_columns(csv_path, numeric)
    with open(csv_path, newline="") as f:
        samplers = [row["sampler"].strip() for row in csv.DictReader(f)]
    names = [c for c in numeric if c != "nfe" and not c.endswith("_stderr")]
    if not names:
        raise DataError(f"{csv_path}: no metric columns besides {list(QUALITY_ID_COLUMNS)}")
    return names, samplers, cols


def quality_nfe_figure(csv_path: PathLike, floors: Mapping[str, float]) -> Figure:
    """Each sample-quality metric against the network evaluations per sample (NFE, log
    axis), one panel per metric and one line per sampler, with standard errors where the
    metric has one, and its floor (the same metric between two draws of real data of the
    same size: what a perfect model scores) as a dashed line.

    Args:
        csv_path: the quality stage's table, e.g. ``reports/quality/nfe.csv``
            (columns ``setting``, ``sampler``, ``nfe``, one per metric, ``<metric>_stderr``).
        floors: ``<metric>_floor`` values (a metric without one is drawn without a floor).
    """
    names, samplers, cols = _read_quality_rows(csv_path)
    n_cols = min(len(names), 3)
    n_rows = math.ceil(len(names) / n_cols)
    fig = Figure(figsize=(4.0 * n_cols, 3.0 * n_rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    nfe = cols["nfe"]
    for ax, name in zip(axes, names, strict=False):
        for sampler in dict.fromkeys(samplers):
            rows = np.array([s == sampler for s in samplers])
            order = np.argsort(nfe[rows])
            err = cols.get(f"{name}_stderr")
            ax.errorbar(nfe[rows][order], cols[name][rows][order], yerr=None if err is None else err[rows][order],
                        marker="o", markersize=4, capsize=3, label=sampler)
        floor = floors.get(f"{name}_floor")
        if floor is not None:
            ax.axhline(floor, color=REFERENCE_COLOR, linestyle="--", label="floor (real vs real)")
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per sample (NFE)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.25)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    axes[0].legend(loc="best", fontsize="small")
    fig.suptitle("Sample quality against sampling cost")
    return fig


# --------------------------------------------------------------------------- PNG files
# Each writes its ``*_figure`` (same arguments) to ``png_path`` atomically and returns ``png_path``.


def plot_loss(csv_path: PathLike, png_path: PathLike, ylabel: str = "training loss (batch mean)") -> Path:
    """See :func:`loss_figure`."""
    return _save_figure(loss_figure(csv_path, ylabel), png_path)


def plot_bound_terms(csv_path: PathLike, png_path: PathLike, unit: str) -> Path:
    """See :func:`bound_terms_figure`."""
    return _save_figure(bound_terms_figure(csv_path, unit), png_path)


def plot_schedule(betas: ArrayLike, png_path: PathLike) -> Path:
    """See :func:`schedule_figure`."""
    return _save_figure(schedule_figure(betas), png_path)


def plot_quality_nfe(csv_path: PathLike, floors: Mapping[str, float], png_path: PathLike) -> Path:
    """See :func:`quality_nfe_figure`."""
    return _save_figure(quality_nfe_figure(csv_path, floors), png_path)


def plot_samples(samples: ArrayLike, meta: Mapping[str, Any], png_path: PathLike, **options: Any) -> Path:
    """Options: ``reference``, ``max_images`` (see :func:`samples_figure`)."""
    return _save_figure(samples_figure(samples, meta, **options), png_path)


def plot_reverse_process(
    trajectory: ArrayLike, steps: ArrayLike, meta: Mapping[str, Any], png_path: PathLike, **options: Any
) -> Path:
    """Options: ``reference``, ``max_examples``, ``max_columns`` (see :func:`reverse_process_figure`)."""
    return _save_figure(reverse_process_figure(trajectory, steps, meta, **options), png_path)


def plot_forward_process(
    x0: ArrayLike, alphas_cumprod: ArrayLike, meta: Mapping[str, Any], png_path: PathLike, **options: Any
) -> Path:
    """Options: ``steps``, ``seed``, ``num_examples`` (see :func:`forward_process_figure`)."""
    return _save_figure(forward_process_figure(x0, alphas_cumprod, meta, **options), png_path)
