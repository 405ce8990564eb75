"""Tests for ddpm.plotting: each figure shows the data it is given (read back from its artists:
image pixels, line and scatter data, labels, scales), and every PNG is written atomically."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from ddpm import plotting
from ddpm.errors import DataError
from ddpm.plotting.grids import _grid_pixels

T = 50
DIGITS = {"kind": "image", "num_levels": 17}
CIFAR = {"kind": "image", "num_levels": 256}
VECTOR = {"kind": "vector", "num_levels": None}


def levels_to_model(v: np.ndarray, num_levels: int) -> np.ndarray:
    """DESIGN.md data scaling, written out independently: x = 2 v / (K - 1) - 1."""
    return 2.0 * v / (num_levels - 1) - 1.0


def digit_images(n: int = 9, seed: int = 0) -> np.ndarray:
    """Digits-like 8x8, 17-level images in model space: a bright stroke on black."""
    rng = np.random.default_rng(seed)
    v = np.zeros((n, 1, 8, 8))
    for i in range(n):
        col = rng.integers(2, 6)
        v[i, 0, 1:7, col] = 16
        v[i, 0, 1:7, col + 1] = rng.integers(4, 17, size=6)
    return levels_to_model(v, 17)


def color_images(n: int = 6, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32))
    return levels_to_model(v, 256)


def swiss_roll(n: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    angle = 1.5 * np.pi * (1 + 2 * rng.random(n))
    pts = np.stack([angle * np.cos(angle), angle * np.sin(angle)], axis=1) / 10.0
    return pts + 0.02 * rng.standard_normal(pts.shape)


def linear_betas(num_timesteps: int = T) -> np.ndarray:
    return np.linspace(1e-4, 0.02 * 1000 / num_timesteps, num_timesteps)


def assert_png(path: Path) -> np.ndarray:
    """The file is a readable PNG, non-empty and not a single flat colour; returns its pixels."""
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[0] > 0 and pixels.shape[1] > 0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1, "image is a single colour"
    return pixels


def assert_only(folder: Path, *names: str) -> None:
    """No temporary or partial files left next to the outputs."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def write_csv(path: Path, header: str, rows: list[tuple]) -> Path:
    path.write_text(header + "\n" + "".join(",".join(str(c) for c in row) + "\n" for row in rows))
    return path


# --------------------------------------------------------------------------- images_to_uint8


def test_images_to_uint8_endpoints_and_17_level_grid() -> None:
    v = np.arange(17, dtype=np.float64).reshape(1, 1, 1, 17)
    out = plotting.images_to_uint8(levels_to_model(v, 17), 17)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 1, 17)
    # Level v of 17 shows as round(255 v / 16), halves up:
    # 0, 16 (15.94), 32 (31.875), ..., 128 (127.5), ..., 255.
    expected = [0, 16, 32, 48, 64, 80, 96, 112, 128, 143, 159, 175, 191, 207, 223, 239, 255]
    assert out.ravel().tolist() == expected
    x = np.array([-1.0, 0.0, 1.0]).reshape(1, 1, 1, 3)
    assert plotting.images_to_uint8(x, 17).ravel().tolist() == [0, 128, 255]


def test_images_to_uint8_256_levels_is_identity_on_the_grid() -> None:
    v = np.arange(256, dtype=np.float64).reshape(1, 1, 16, 16)
    out = plotting.images_to_uint8(torch.from_numpy(levels_to_model(v, 256)).float(), 256)
    np.testing.assert_array_equal(out, v.astype(np.uint8))


def test_images_to_uint8_rounds_to_nearest_level_and_clips() -> None:
    step = 2.0 / 16  # spacing of the 17-level grid in model space
    x = np.array([-1.0 + 0.49 * step, -1.0 + 0.51 * step, 0.3 * step, 5.0, -7.0, np.nan]).reshape(1, 1, 1, 6)
    assert plotting.images_to_uint8(x, 17).ravel().tolist() == [0, 16, 128, 255, 0, 0]


@pytest.mark.parametrize("num_levels", [1, 0, 2.5, None, True])
def test_images_to_uint8_rejects_bad_num_levels(num_levels) -> None:
    with pytest.raises(ValueError, match="num_levels"):
        plotting.images_to_uint8(np.zeros((1, 1, 2, 2)), num_levels)


def test_images_to_uint8_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        plotting.images_to_uint8(np.zeros((8, 8)), 17)


# --------------------------------------------------------------------------- save_image_grid


def test_save_image_grid_digits_upscaled_greyscale_and_pixel_exact(tmp_path: Path) -> None:
    x = digit_images(9)
    out = plotting.save_image_grid(x, 17, tmp_path / "grid.png")
    assert out == tmp_path / "grid.png"
    assert_only(tmp_path, "grid.png")
    with Image.open(out) as im:
        assert im.mode == "L"
        pixels = np.asarray(im)
    pad, cell = plotting.GRID_PADDING, 64  # 8x8 digits are shown at least 64x64
    assert pixels.shape == (3 * cell + 4 * pad, 3 * cell + 4 * pad)
    expected = plotting.images_to_uint8(x, 17)
    for i in range(9):
        r, c = divmod(i, 3)
        tile = pixels[pad + r * (cell + pad) :][:cell, pad + c * (cell + pad) :][:, :cell]
        np.testing.assert_array_equal(tile, np.kron(expected[i, 0], np.ones((8, 8), dtype=np.uint8)))


def test_save_image_grid_color_nrow_and_scale(tmp_path: Path) -> None:
    x = color_images(6)
    out = plotting.save_image_grid(x, 256, tmp_path / "grid.png", nrow=3, scale=1)
    pixels = assert_png(out)
    with Image.open(out) as im:
        assert im.mode == "RGB"
    pad = plotting.GRID_PADDING
    assert pixels.shape == (2 * 32 + 3 * pad, 3 * 32 + 4 * pad, 3)
    np.testing.assert_array_equal(
        pixels[pad : pad + 32, pad : pad + 32],
        plotting.images_to_uint8(x, 256)[0].transpose(1, 2, 0),
    )
    assert_only(tmp_path, "grid.png")


@pytest.mark.parametrize(
    ("n", "channels", "nrow", "scale"), [(9, 1, 3, 8), (7, 1, 3, 2), (6, 3, 4, 1), (2, 3, 5, 3), (12, 1, 12, 1)]
)
def test_grid_is_torchvisions_make_grid_pixel_for_pixel(n, channels, nrow, scale) -> None:
    """The grid is tiled by hand (importing torchvision costs the stages seconds); its layout is
    make_grid's: full rows of nrow, the last row partly empty, padding between and around."""
    from torchvision.utils import make_grid

    images = np.random.default_rng(n).integers(0, 256, size=(n, channels, 5, 4), dtype=np.uint8)
    upscaled = torch.from_numpy(images.repeat(scale, axis=2).repeat(scale, axis=3))
    expected = make_grid(upscaled, nrow=nrow, padding=plotting.GRID_PADDING, pad_value=plotting.GRID_PAD_VALUE)
    expected = expected[0].numpy() if channels == 1 else expected.permute(1, 2, 0).numpy()
    got = _grid_pixels(images, nrow=nrow, scale=scale)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_a_single_image_is_framed_like_any_grid() -> None:
    """make_grid returns one image unframed; the strip's tick positions assume the frame."""
    image = np.full((1, 1, 3, 2), 7, dtype=np.uint8)
    grid = _grid_pixels(image, nrow=4, scale=2)
    pad = plotting.GRID_PADDING
    assert grid.shape == (6 + 2 * pad, 4 + 2 * pad)
    assert (grid[pad:-pad, pad:-pad] == 7).all()
    grid[pad:-pad, pad:-pad] = plotting.GRID_PAD_VALUE
    assert (grid == plotting.GRID_PAD_VALUE).all()


# --------------------------------------------------------------------------- reading figures back


def shown_pixels(x: np.ndarray, num_levels: int) -> np.ndarray:
    """What the figures must show for images ``x``: display levels, [N, H, W] or [N, H, W, 3]."""
    pixels = plotting.images_to_uint8(x, num_levels)
    return pixels[:, 0] if pixels.shape[1] == 1 else pixels.transpose(0, 2, 3, 1)


def image_grid(fig: Figure) -> np.ndarray:
    """The pixels of the one image a grid figure shows."""
    (ax,) = fig.axes
    (image,) = ax.images
    return np.asarray(image.get_array())


def grid_tiles(grid: np.ndarray, n_rows: int, n_cols: int, size: int) -> np.ndarray:
    """Cut a padded grid of square ``size`` images into tiles ``[n_rows, n_cols, size, size(, 3)]``,
    checking that each tile is its image upscaled by a whole number of pixels per pixel."""
    pad = plotting.GRID_PADDING
    cell = (grid.shape[1] - (n_cols + 1) * pad) // n_cols
    assert grid.shape[:2] == (n_rows * cell + (n_rows + 1) * pad, n_cols * cell + (n_cols + 1) * pad)
    assert cell % size == 0, f"cell of {cell} pixels is not a whole upscaling of {size}"
    scale = cell // size
    tiles = np.empty((n_rows, n_cols, size, size) + grid.shape[2:], dtype=grid.dtype)
    for r in range(n_rows):
        for c in range(n_cols):
            tile = grid[pad + r * (cell + pad) :][:cell, pad + c * (cell + pad) :][:, :cell]
            tiles[r, c] = tile[::scale, ::scale]
            np.testing.assert_array_equal(tile, tiles[r, c].repeat(scale, 0).repeat(scale, 1))
    return tiles


def tick_labels(ax) -> list[str]:
    return [label.get_text() for label in ax.get_xticklabels()]


def panels(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def offsets(collection) -> np.ndarray:
    return np.asarray(collection.get_offsets(), dtype=np.float64)


def line_data(line) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(line.get_xdata(), dtype=np.float64), np.asarray(line.get_ydata(), dtype=np.float64)


def noised(x0: np.ndarray, abar: np.ndarray, i: int, eps: np.ndarray) -> np.ndarray:
    """Ho et al. eq. 4 at code index i (paper t = i + 1), written out independently."""
    return np.sqrt(abar[i]) * x0 + np.sqrt(1 - abar[i]) * eps


IMAGE_AND_VECTOR_DATA = pytest.mark.parametrize(
    "x0, meta",
    [(digit_images(6), DIGITS), (color_images(3), CIFAR), (swiss_roll(), VECTOR)],
    ids=["digits", "color", "vector"],
)


# --------------------------------------------------------------------------- samples


@pytest.mark.parametrize(
    "samples, meta, nrow", [(digit_images(10), DIGITS, 4), (color_images(5), CIFAR, 3)], ids=["digits", "color"]
)
def test_samples_figure_shows_every_sample_in_its_grid_cell(samples: np.ndarray, meta: dict, nrow: int) -> None:
    fig = plotting.samples_figure(torch.from_numpy(samples), meta)
    n, size = len(samples), samples.shape[-1]
    tiles = grid_tiles(image_grid(fig), -(-n // nrow), nrow, size)
    expected = shown_pixels(samples, meta["num_levels"])
    for i in range(n):
        np.testing.assert_array_equal(tiles[divmod(i, nrow)], expected[i])
    channels = samples.shape[1]
    assert fig.axes[0].get_title() == (
        f"Samples: {n} images, {size}x{size}x{channels}, K = {meta['num_levels']} levels"
    )


def test_samples_figure_shows_only_the_first_max_images() -> None:
    samples = digit_images(10)
    fig = plotting.samples_figure(samples, DIGITS, max_images=4)
    tiles = grid_tiles(image_grid(fig), 2, 2, 8)
    np.testing.assert_array_equal(tiles.reshape(4, 8, 8), shown_pixels(samples[:4], 17))
    assert fig.axes[0].get_title().startswith("Samples: 4 of 10 images")


def test_samples_figure_vector_scatters_the_samples_over_the_reference() -> None:
    samples, reference = swiss_roll(seed=1), swiss_roll(n=200, seed=2)
    samples[:3, 0] = [1e6, np.nan, -np.inf]  # diverged points
    (ax,) = plotting.samples_figure(samples, VECTOR, reference=torch.from_numpy(reference)).axes
    behind, points = ax.collections
    np.testing.assert_array_equal(offsets(points), samples)
    np.testing.assert_array_equal(offsets(behind), reference)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["held-out data (n=200)", "samples (n=300)"]
    # The diverged points do not set the view: the roll (radius < 1.5) fills it.
    (x_low, x_high), (y_low, y_high) = ax.get_xlim(), ax.get_ylim()
    assert -2 < x_low < -1 < 1 < x_high < 2 and -2 < y_low < -1 < 1 < y_high < 2
    assert [t.get_text() for t in ax.texts] == ["3 point(s) outside view"]
    assert ax.get_title() == "Samples vs held-out data"


def test_samples_figure_vector_without_reference() -> None:
    samples = swiss_roll()
    (ax,) = plotting.samples_figure(samples, VECTOR).axes
    (points,) = ax.collections
    np.testing.assert_array_equal(offsets(points), samples)
    assert ax.get_title() == "Samples" and not ax.texts


# --------------------------------------------------------------------------- reverse process


def reverse_trajectory(x0: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Snapshots [S, n, ...] that differ at every step: x_t drawn from q(x_t | x_0)."""
    abar = np.cumprod(1 - linear_betas())
    rng = np.random.default_rng(0)
    return np.stack([x0 if s == 0 else noised(x0, abar, s - 1, rng.standard_normal(x0.shape)) for s in steps])


@IMAGE_AND_VECTOR_DATA
def test_reverse_process_figure_shows_each_snapshot_under_its_timestep(x0: np.ndarray, meta: dict) -> None:
    steps = np.array([T, 40, 25, 10, 3, 0])
    traj = reverse_trajectory(x0, steps)
    reference = swiss_roll(seed=3) if meta["kind"] == "vector" else None
    fig = plotting.reverse_process_figure(traj, torch.from_numpy(steps), meta, reference=reference)
    labels = [f"t={s}" for s in steps]
    if meta["kind"] == "vector":
        assert [ax.get_title() for ax in panels(fig)] == labels
        for ax, frame in zip(panels(fig), traj, strict=True):
            behind, points = ax.collections
            np.testing.assert_array_equal(offsets(points), frame)
            np.testing.assert_array_equal(offsets(behind), reference)
        return
    (ax,) = fig.axes
    assert tick_labels(ax) == labels
    assert ax.get_xlabel() == "timestep t (reverse steps remaining)"
    tiles = grid_tiles(image_grid(fig), len(x0), len(steps), x0.shape[-1])
    for c, frame in enumerate(traj):
        np.testing.assert_array_equal(tiles[:, c], shown_pixels(frame, meta["num_levels"]))


def test_reverse_process_figure_thins_long_trajectories_keeping_first_and_last() -> None:
    steps = np.arange(T, -1, -1)
    traj = np.random.default_rng(0).uniform(-1, 1, (len(steps), 12, 1, 8, 8))
    fig = plotting.reverse_process_figure(traj, steps, DIGITS, max_examples=8, max_columns=10)
    columns = np.round(np.linspace(0, T, 10)).astype(int)  # evenly spread indices into steps
    assert tick_labels(fig.axes[0]) == [f"t={steps[c]}" for c in columns]
    assert tick_labels(fig.axes[0])[0] == f"t={T}" and tick_labels(fig.axes[0])[-1] == "t=0"
    tiles = grid_tiles(image_grid(fig), 8, 10, 8)
    for j, c in enumerate(columns):
        np.testing.assert_array_equal(tiles[:, j], shown_pixels(traj[c, :8], 17))


def test_reverse_process_figure_wraps_vector_panels_into_rows() -> None:
    steps = np.arange(7, -1, -1)
    traj = np.random.default_rng(0).standard_normal((len(steps), 50, 2))
    fig = plotting.reverse_process_figure(traj, steps, VECTOR)
    assert len(fig.axes) == 2 * plotting.MAX_PANELS_PER_ROW and len(panels(fig)) == len(steps)
    for ax, frame in zip(panels(fig), traj, strict=True):
        np.testing.assert_array_equal(offsets(ax.collections[-1]), frame)


def test_reverse_process_rejects_mismatched_steps(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="len\\(steps\\)"):
        plotting.save_figure(plotting.reverse_process_figure(np.zeros((3, 4, 2)), [2, 1], VECTOR), tmp_path / "r.png")
    assert_only(tmp_path)


# --------------------------------------------------------------------------- forward process


@IMAGE_AND_VECTOR_DATA
def test_forward_process_figure_shows_q_xt_given_x0_at_the_paper_timestep(x0: np.ndarray, meta: dict) -> None:
    abar = np.cumprod(1 - linear_betas())
    steps = [0, 9, 30, T - 1]  # code indices: paper t = 1, 10, 31, T
    fig = plotting.forward_process_figure(x0, torch.from_numpy(abar), meta, steps=steps, seed=5, num_examples=2)
    shown = x0[:2] if meta["kind"] == "image" else x0
    eps = np.random.default_rng(5).standard_normal(shown.shape)
    frames = [shown] + [noised(shown, abar, i, eps) for i in steps]
    labels = ["t=0\n(data)"] + [f"t={i + 1}\n" + rf"$\bar\alpha$={abar[i]:.2g}" for i in steps]
    if meta["kind"] == "vector":
        assert [ax.get_title() for ax in panels(fig)] == labels
        for ax, frame in zip(panels(fig), frames, strict=True):
            (points,) = ax.collections
            np.testing.assert_allclose(offsets(points), frame, rtol=0, atol=1e-15)
        return
    (ax,) = fig.axes
    assert tick_labels(ax) == labels
    tiles = grid_tiles(image_grid(fig), 2, len(frames), x0.shape[-1])
    for c, frame in enumerate(frames):
        np.testing.assert_array_equal(tiles[:, c], shown_pixels(frame, meta["num_levels"]))


def test_forward_process_figure_default_steps_span_t_1_to_T() -> None:
    abar = np.cumprod(1 - linear_betas())
    fig = plotting.forward_process_figure(swiss_roll(), abar, VECTOR)
    titles = [ax.get_title().split("\n")[0] for ax in panels(fig)]
    assert titles == ["t=0"] + [f"t={i + 1}" for i in np.round(np.linspace(0, T - 1, 8)).astype(int)]
    assert titles[1] == "t=1" and titles[-1] == f"t={T}"


def test_forward_process_figure_is_seeded() -> None:
    abar = np.cumprod(1 - linear_betas())

    def noisy_points(seed: int) -> np.ndarray:
        fig = plotting.forward_process_figure(swiss_roll(), abar, VECTOR, steps=[10], seed=seed)
        return offsets(panels(fig)[1].collections[0])

    np.testing.assert_array_equal(noisy_points(3), noisy_points(3))
    assert not np.array_equal(noisy_points(3), noisy_points(4))


def test_forward_process_rejects_out_of_range_steps() -> None:
    abar = np.cumprod(1 - linear_betas())
    with pytest.raises(ValueError, match=f"0..{T - 1}"):
        plotting.forward_process_figure(swiss_roll(), abar, VECTOR, steps=[0, T])


# --------------------------------------------------------------------------- schedule


def test_schedule_figure_plots_beta_abar_and_log_snr_against_paper_t() -> None:
    betas = linear_betas()
    betas[-1] = 1.0  # abar_T = 0 (the jsd schedule): log SNR_T = -inf, drawn without failing
    fig = plotting.schedule_figure(torch.from_numpy(betas))
    abar = np.cumprod(1 - betas)
    with np.errstate(divide="ignore"):
        expected = [betas, abar, np.log(abar / (1 - abar))]
    assert len(fig.axes) == 3
    for ax, values in zip(fig.axes, expected, strict=True):
        x, y = line_data(ax.lines[0])
        np.testing.assert_array_equal(x, np.arange(1, T + 1))
        np.testing.assert_allclose(y[:-1], values[:-1], rtol=1e-12)
        assert y[-1] == values[-1]
        assert ax.get_xlabel() == r"timestep $t$ (1..T)"
    assert fig.axes[2].get_ylabel().endswith("(nats)")
    assert fig.get_suptitle().startswith(f"Noise schedule (T = {T},")


# --------------------------------------------------------------------------- training loss


def expected_ema(values: np.ndarray, span: float) -> np.ndarray:
    """Bias-corrected EMA as a weighted mean: weight beta^(i - j) on value j at step i."""
    beta = 1 - 2 / (span + 1)
    i, j = np.meshgrid(np.arange(len(values)), np.arange(len(values)), indexing="ij")
    weights = np.where(j <= i, beta ** np.abs(i - j), 0.0)
    return weights @ values / weights.sum(axis=1)


def test_loss_figure_plots_loss_against_step_with_its_ema(tmp_path: Path) -> None:
    steps = np.arange(200)
    loss = 1.0 / (1 + steps / 5) + 0.01 * np.random.default_rng(0).random(200)  # spans > 1 decade
    order = np.random.default_rng(1).permutation(200)  # rows out of order: plotted by step
    rows = [(steps[k], loss[k], 1e-3) for k in order] + [(200, "nan", 1e-3), (201, "", 1e-3)]
    csv_path = write_csv(tmp_path / "loss.csv", "step,loss,lr", rows)
    (ax,) = plotting.loss_figure(csv_path, ylabel="simple loss (MSE)").axes
    raw, smooth = ax.lines
    np.testing.assert_array_equal(line_data(raw)[0], steps)
    np.testing.assert_array_equal(line_data(raw)[1], loss)
    np.testing.assert_array_equal(line_data(smooth)[0], steps)
    np.testing.assert_allclose(line_data(smooth)[1], expected_ema(loss, span=5.0), rtol=1e-12)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["per step", "EMA (span 5 points)"]
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "training step" and ax.get_ylabel() == "simple loss (MSE)"
    assert ax.get_title().endswith("\n2 non-finite value(s) omitted")


def test_loss_figure_single_row_and_flat_range(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "loss.csv", "lr,loss,step", [(1e-3, 0.5, 7)])
    (ax,) = plotting.loss_figure(csv_path).axes
    (line,) = ax.lines
    assert line_data(line) == ([7.0], [0.5]) and line.get_marker() == "o"
    assert ax.get_yscale() == "linear"
    assert ax.get_title() == "Training loss (1 points, final 0.5)"


@pytest.mark.parametrize(
    "header, rows, match",
    [
        ("step,mse", [(0, 1.0)], "missing column.*'loss'"),
        ("step,loss", [(0, "high")], r"loss.csv:2: column 'loss' has non-numeric value 'high'"),
        ("step,loss", [], "no data rows"),
        ("step,loss", [(0, "nan")], "no finite"),
    ],
)
def test_loss_figure_refuses_a_malformed_report_as_a_data_error(
    tmp_path: Path, header: str, rows: list, match: str
) -> None:
    csv_path = write_csv(tmp_path / "loss.csv", header, rows)
    with pytest.raises(DataError, match=match):
        plotting.save_figure(plotting.loss_figure(csv_path), tmp_path / "loss.png")
    assert_only(tmp_path, "loss.csv")


# --------------------------------------------------------------------------- bound terms


def bound_terms(decoder: float, num_timesteps: int = T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.arange(1, num_timesteps + 1)
    terms = 0.3 * np.exp(-t / 8) + 1e-4
    terms[0] = decoder
    return t, terms, 0.1 * np.abs(terms)


def write_terms(path: Path, t: np.ndarray, terms: np.ndarray, stderr: list) -> Path:
    order = np.random.default_rng(0).permutation(len(t))  # rows out of order: plotted by t
    return write_csv(path, "t,term,stderr", [(int(t[k]), repr(float(terms[k])), stderr[k]) for k in order])


@pytest.mark.parametrize("unit", ["bits/dim", "nats/dim"])
def test_bound_terms_figure_plots_the_kl_terms_at_paper_t_in_the_given_unit(tmp_path: Path, unit: str) -> None:
    t, terms, stderr = bound_terms(decoder=0.9)
    csv_path = write_terms(tmp_path / "terms.csv", t, terms, [repr(float(s)) for s in stderr])
    (ax,) = plotting.bound_terms_figure(csv_path, unit).axes
    kl_line = ax.lines[0]
    np.testing.assert_array_equal(line_data(kl_line)[0], t[1:])  # L_{t-1} at t = 2..T
    np.testing.assert_array_equal(line_data(kl_line)[1], terms[1:])  # as written, in `unit`
    band = ax.collections[0].get_paths()[0].vertices
    for ti, low, high in zip(t[1:], terms[1:] - stderr[1:], terms[1:] + stderr[1:], strict=True):
        ys = band[band[:, 0] == ti, 1]
        assert np.isclose(ys, low, rtol=1e-12).any() and np.isclose(ys, high, rtol=1e-12).any()
    # L_0 at t = 1 with its error bar.
    (decoder,) = ax.containers
    np.testing.assert_array_equal(line_data(decoder.lines[0]), ([1.0], [0.9]))
    np.testing.assert_allclose(decoder.lines[2][0].get_segments()[0], [[1, 0.9 - 0.09], [1, 0.9 + 0.09]], rtol=1e-12)
    assert ax.get_yscale() == "log"
    assert ax.get_ylabel() == f"mean term per dimension ({unit})"
    assert ax.get_title() == f"Variational bound per timestep ({unit})"
    assert ax.get_xlabel().startswith("timestep $t$ (paper index")
    title = ax.get_legend().get_title().get_text()
    assert title.startswith(f"sum of all {T} terms = {terms.sum():.4g} {unit}\n")


@pytest.mark.parametrize("decoder", [-1.7, 0.0])
def test_bound_terms_figure_pins_a_non_positive_decoder_term_to_the_bottom(tmp_path: Path, decoder: float) -> None:
    t, terms, stderr = bound_terms(decoder)
    csv_path = write_terms(tmp_path / "terms.csv", t, terms, [repr(float(s)) for s in stderr])
    (ax,) = plotting.bound_terms_figure(csv_path, "nats/dim").axes
    marker = ax.lines[-1]
    assert marker.get_marker() == "v" and not ax.containers
    np.testing.assert_array_equal(line_data(marker), ([1.0], [ax.get_ylim()[0]]))
    assert ax.get_ylim()[0] == pytest.approx(terms[1:].min() / 3, rel=1e-12)
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[-1] == rf"$L_0$ (decoder, $t=1$) = {decoder:.4g} $\pm$ {abs(decoder) * 0.1:.2g} (off scale)"


def test_bound_terms_figure_tolerates_missing_stderr_and_nonpositive_kl(tmp_path: Path) -> None:
    t, terms, stderr = bound_terms(decoder=0.5)
    terms[5] = -1e-12  # numerical noise in a KL term (t = 6)
    cells = ["" if ti % 2 else repr(float(s)) for ti, s in zip(t, stderr, strict=True)]
    csv_path = write_terms(tmp_path / "terms.csv", t, terms, cells)
    (ax,) = plotting.bound_terms_figure(csv_path, "bits/dim").axes
    kept = (t >= 2) & (t != 6)
    np.testing.assert_array_equal(line_data(ax.lines[0])[0], t[kept])
    np.testing.assert_array_equal(line_data(ax.lines[0])[1], terms[kept])
    assert ax.get_legend().get_title().get_text().endswith("\n1 non-positive KL term(s) not drawn")
    # t = 1 has no standard error (odd t): no error bar, none in the label.
    (decoder,) = ax.containers
    np.testing.assert_array_equal(decoder.lines[2][0].get_segments()[0], [[1, 0.5], [1, 0.5]])
    assert ax.get_legend().get_texts()[-1].get_text() == r"$L_0$ (decoder, $t=1$) = 0.5"


def test_bound_terms_rejects_unknown_unit(tmp_path: Path) -> None:
    t, terms, stderr = bound_terms(decoder=0.5)
    csv_path = write_terms(tmp_path / "terms.csv", t, terms, list(stderr))
    with pytest.raises(ValueError, match="bits/dim"):
        plotting.bound_terms_figure(csv_path, "bpd")


def test_bound_terms_refuses_a_report_with_nothing_to_draw_as_a_data_error(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "terms.csv", "t,term,stderr", [(1, -0.5, 0.1), (2, 0.0, 0.0)])
    with pytest.raises(DataError, match="no positive finite term"):
        plotting.bound_terms_figure(csv_path, "nats/dim")


def test_meta_kind_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="meta\\['kind'\\]"):
        plotting.save_figure(plotting.samples_figure(swiss_roll(), {"kind": "points"}), tmp_path / "s.png")
    assert_only(tmp_path)


# --------------------------------------------------------------------------- PNG files


def loss_csv(folder: Path) -> Path:
    return write_csv(folder / "loss.csv", "step,loss", [(s, 1.0 / (1 + s)) for s in range(100)])


def terms_csv(folder: Path) -> Path:
    t, terms, stderr = bound_terms(decoder=0.9)
    return write_terms(folder / "terms.csv", t, terms, list(stderr))


def nfe_csv(folder: Path) -> Path:
    return write_csv(
        folder / "nfe.csv",
        "setting,sampler,nfe,fd_classifier,fd_classifier_stderr",
        [("ddim_10", "ddim", 10, 9.0, 0.5), ("ddim_50", "ddim", 50, 4.0, "")],
    )


ABAR = np.cumprod(1 - linear_betas())
STEPS = np.array([T, 25, 0])
PLOT_INPUTS = {  # figure name -> (positional, keyword) arguments, given a folder for report files
    "loss": lambda folder: ((loss_csv(folder),), {}),
    "bound_terms": lambda folder: ((terms_csv(folder),), {"unit": "bits/dim"}),
    "schedule": lambda folder: ((linear_betas(),), {}),
    "samples": lambda folder: ((swiss_roll(), VECTOR), {"reference": swiss_roll(seed=1)}),
    "reverse_process": lambda folder: ((reverse_trajectory(digit_images(3), STEPS), STEPS, DIGITS), {}),
    "forward_process": lambda folder: ((color_images(2), ABAR, CIFAR), {"seed": 1}),
    "quality_nfe": lambda folder: ((nfe_csv(folder), {"fd_classifier_floor": 0.5}), {}),
    "sde_schedule": lambda folder: (
        (np.linspace(0.01, 1, 50), np.ones(50), np.linspace(0.1, 5, 50), np.linspace(1, 3, 50), "VE SDE"),
        {},
    ),
    "sigma_ladder": lambda folder: ((np.geomspace(50, 0.01, 20),), {}),
}


def png_pixels(source) -> np.ndarray:
    with Image.open(source) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("name", list(PLOT_INPUTS))
def test_save_figure_writes_each_figure_as_one_png(tmp_path: Path, name: str) -> None:
    """``save_figure`` writes exactly the figure ``<name>_figure`` builds, and nothing else."""
    args, kwargs = PLOT_INPUTS[name](tmp_path)
    png = tmp_path / "figures" / "f.png"
    assert plotting.save_figure(getattr(plotting, f"{name}_figure")(*args, **kwargs), png) == png
    assert_only(tmp_path / "figures", "f.png")
    pixels = assert_png(png)
    rendered = io.BytesIO()
    getattr(plotting, f"{name}_figure")(*args, **kwargs).savefig(rendered, format="png", dpi=plotting.DPI)
    np.testing.assert_array_equal(pixels, png_pixels(rendered))


# --------------------------------------------------------------------------- atomic writes


def test_write_into_a_file_instead_of_a_folder_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(OSError):
        plotting.save_figure(plotting.schedule_figure(linear_betas()), blocker / "schedule.png")
    with pytest.raises(OSError):
        plotting.save_image_grid(digit_images(), 17, blocker / "grid.png")
    assert_only(tmp_path, "not_a_dir")
    assert blocker.read_text() == "x"


def test_target_that_is_a_folder_leaves_no_partial_file(tmp_path: Path) -> None:
    (tmp_path / "fig.png").mkdir()
    with pytest.raises(OSError):
        plotting.save_figure(plotting.samples_figure(swiss_roll(), VECTOR), tmp_path / "fig.png")
    with pytest.raises(OSError):
        plotting.save_image_grid(color_images(2), 256, tmp_path / "fig.png")
    assert_only(tmp_path, "fig.png")
    assert list((tmp_path / "fig.png").iterdir()) == []


def test_crash_while_writing_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "schedule.png"
    plotting.save_figure(plotting.schedule_figure(linear_betas()), target)
    before = target.read_bytes()

    def crash_midway(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", crash_midway)
    with pytest.raises(RuntimeError, match="disk full"):
        plotting.save_figure(plotting.schedule_figure(linear_betas()), target)
    assert target.read_bytes() == before
    assert_only(tmp_path, "schedule.png")


def test_crash_while_writing_grid_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash_midway(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        plotting.save_image_grid(digit_images(), 17, tmp_path / "grid.png")
    assert_only(tmp_path)


def test_import_and_plot_leave_matplotlib_global_state_alone(tmp_path: Path) -> None:
    """No pyplot, no backend switch: figures live on standalone Agg canvases. Image grids do not
    load torchvision (with it torch._dynamo: seconds of every sample and plot stage)."""
    code = (
        "import sys, matplotlib, numpy as np\n"
        # Raw rcParams value: matplotlib.get_backend() itself may import pyplot to resolve it.
        "before = dict.__getitem__(matplotlib.rcParams, 'backend')\n"
        "from ddpm import plotting\n"
        f"plotting.save_figure(plotting.schedule_figure(np.linspace(1e-4, 0.02, 20)), {str(tmp_path / 's.png')!r})\n"
        f"plotting.save_image_grid(np.zeros((4, 1, 8, 8)), 17, {str(tmp_path / 'g.png')!r})\n"
        "plotting.save_figure(plotting.samples_figure(np.zeros((4, 3, 8, 8)), {'kind': 'image', 'num_levels': 256}), "
        f"{str(tmp_path / 'x.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
        "assert dict.__getitem__(matplotlib.rcParams, 'backend') == before\n"
    )
    repo_root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root)
    for name in ("s.png", "g.png", "x.png"):
        assert_png(tmp_path / name)


def test_each_figure_group_loads_only_its_own_module() -> None:
    """A stage that draws the samples figure loads (and DVC tracks) the grids module and its helpers,
    not the report or schedule figures."""
    code = (
        "import sys, ddpm.plotting as p\n"
        "p.samples_figure, p.save_figure\n"
        "print(sorted(m for m in sys.modules if m.startswith('ddpm.plotting')))\n"
    )
    repo_root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root, capture_output=True, text=True)
    loaded = ["ddpm.plotting", "ddpm.plotting._common", "ddpm.plotting._scatter", "ddpm.plotting.grids"]
    assert out.stdout.strip() == repr(loaded)


def test_quality_nfe_figure_draws_each_metric_per_sampler_against_nfe_with_its_floor(tmp_path: Path) -> None:
    csv_path = tmp_path / "nfe.csv"
    csv_path.write_text(
        "setting,sampler,nfe,fd_classifier,kid_classifier,kid_classifier_stderr\n"
        "ddim_50,ddim,50,4.0,0.03,0.01\n"
        "ancestral_1000,ancestral,1000,2.0,0.01,0.005\n"
        "ddim_10,ddim,10,9.0,0.08,0.02\n"
    )
    fig = plotting.quality_nfe_figure(csv_path, {"fd_classifier_floor": 0.5, "kid_classifier_floor": 0.001})
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(panels) == {"fd_classifier", "kid_classifier"}
    fd = panels["fd_classifier"]
    # Each sampler is an errorbar container (its data line first); the floor a plain line.
    lines = {c.get_label(): c.lines[0] for c in fd.containers} | {line.get_label(): line for line in fd.get_lines()}
    assert np.array_equal(lines["ddim"].get_xdata(), [10, 50])  # sorted by NFE
    assert np.array_equal(lines["ddim"].get_ydata(), [9.0, 4.0])
    assert np.array_equal(lines["ancestral"].get_xdata(), [1000])
    assert np.array_equal(lines["ancestral"].get_ydata(), [2.0])
    assert np.allclose(lines["floor (real vs real)"].get_ydata(), 0.5)
    assert fd.get_xscale() == "log"
    # KID's standard errors are drawn as error bars: ddim's bar at NFE 10 spans 0.08 +- 0.02.
    segments = [seg for coll in panels["kid_classifier"].collections for seg in coll.get_segments()]
    assert any(np.allclose(seg, [[10, 0.06], [10, 0.10]]) for seg in segments)


def test_quality_nfe_figure_refuses_a_table_without_metrics(tmp_path: Path) -> None:
    csv_path = tmp_path / "nfe.csv"
    csv_path.write_text("setting,sampler,nfe\nddim_10,ddim,10\n")
    with pytest.raises(DataError, match="no metric columns"):
        plotting.quality_nfe_figure(csv_path, {})
