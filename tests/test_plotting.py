"""Tests for ddpm.plotting: every figure is a valid, non-blank PNG written atomically."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from ddpm import plotting

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
    x = np.array([-1.0 + 0.49 * step, -1.0 + 0.51 * step, 0.3 * step, 5.0, -7.0, np.nan]).reshape(
        1, 1, 1, 6
    )
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
        np.testing.assert_array_equal(
            tile, np.kron(expected[i, 0], np.ones((8, 8), dtype=np.uint8))
        )


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


# --------------------------------------------------------------------------- figures


@pytest.mark.parametrize(
    "samples, meta",
    [(digit_images(10), DIGITS), (color_images(5), CIFAR), (swiss_roll(), VECTOR)],
    ids=["digits", "color", "vector"],
)
def test_plot_samples(tmp_path: Path, samples: np.ndarray, meta: dict) -> None:
    out = plotting.plot_samples(torch.from_numpy(samples), meta, tmp_path / "samples.png")
    assert_png(out)
    assert_only(tmp_path, "samples.png")


def test_plot_samples_vector_with_reference_and_diverged_points(tmp_path: Path) -> None:
    samples = swiss_roll(seed=1)
    samples[:3, 0] = [1e6, np.nan, -np.inf]
    assert_png(
        plotting.plot_samples(samples, VECTOR, tmp_path / "s.png", reference=swiss_roll(seed=2))
    )
    assert_only(tmp_path, "s.png")


@pytest.mark.parametrize(
    "x0, meta",
    [(digit_images(6), DIGITS), (color_images(3), CIFAR), (swiss_roll(), VECTOR)],
    ids=["digits", "color", "vector"],
)
def test_plot_reverse_process(tmp_path: Path, x0: np.ndarray, meta: dict) -> None:
    steps = np.array([T, 40, 25, 10, 3, 0])
    abar = np.cumprod(1 - linear_betas())
    rng = np.random.default_rng(0)
    traj = np.stack(
        [
            (
                x0
                if s == 0
                else np.sqrt(abar[s - 1]) * x0
                + np.sqrt(1 - abar[s - 1]) * rng.standard_normal(x0.shape)
            )
            for s in steps
        ]
    )
    reference = swiss_roll(seed=3) if meta["kind"] == "vector" else None
    out = plotting.plot_reverse_process(
        traj, torch.from_numpy(steps), meta, tmp_path / "reverse.png", reference=reference
    )
    assert_png(out)
    assert_only(tmp_path, "reverse.png")


def test_plot_reverse_process_thins_long_trajectories(tmp_path: Path) -> None:
    steps = np.arange(T, -1, -1)
    traj = np.random.default_rng(0).standard_normal((len(steps), 12, 1, 8, 8))
    assert_png(plotting.plot_reverse_process(traj, steps, DIGITS, tmp_path / "r.png"))


def test_plot_reverse_process_rejects_mismatched_steps(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="len\\(steps\\)"):
        plotting.plot_reverse_process(np.zeros((3, 4, 2)), [2, 1], VECTOR, tmp_path / "r.png")
    assert_only(tmp_path)


@pytest.mark.parametrize(
    "x0, meta",
    [(digit_images(6), DIGITS), (color_images(3), CIFAR), (swiss_roll(), VECTOR)],
    ids=["digits", "color", "vector"],
)
def test_plot_forward_process(tmp_path: Path, x0: np.ndarray, meta: dict) -> None:
    abar = torch.cumprod(1 - torch.from_numpy(linear_betas()), dim=0)
    out = plotting.plot_forward_process(x0, abar, meta, tmp_path / "forward.png")
    assert_png(out)
    assert_only(tmp_path, "forward.png")


def test_plot_forward_process_is_seeded(tmp_path: Path) -> None:
    abar = np.cumprod(1 - linear_betas())
    a = plotting.plot_forward_process(
        swiss_roll(), abar, VECTOR, tmp_path / "a.png", steps=[0, 10, T - 1], seed=3
    )
    b = plotting.plot_forward_process(
        swiss_roll(), abar, VECTOR, tmp_path / "b.png", steps=[0, 10, T - 1], seed=3
    )
    np.testing.assert_array_equal(assert_png(a), assert_png(b))


def test_plot_forward_process_rejects_out_of_range_steps(tmp_path: Path) -> None:
    abar = np.cumprod(1 - linear_betas())
    with pytest.raises(ValueError, match=f"0..{T - 1}"):
        plotting.plot_forward_process(swiss_roll(), abar, VECTOR, tmp_path / "f.png", steps=[0, T])


def test_plot_schedule(tmp_path: Path) -> None:
    assert_png(plotting.plot_schedule(torch.from_numpy(linear_betas()), tmp_path / "schedule.png"))
    assert_only(tmp_path, "schedule.png")


def test_plot_loss_ignores_extra_columns(tmp_path: Path) -> None:
    steps = np.arange(200)
    loss = 1.0 / (1 + steps / 5) + 0.01 * np.random.default_rng(0).random(
        200
    )  # spans > 1 decade: log axis
    rows = [(s, l, 1e-3) for s, l in zip(steps, loss)] + [(200, "nan", 1e-3), (201, "", 1e-3)]
    csv_path = write_csv(tmp_path / "loss.csv", "step,loss,lr", rows)
    assert_png(plotting.plot_loss(csv_path, tmp_path / "loss.png"))
    assert_only(tmp_path, "loss.csv", "loss.png")


def test_plot_loss_single_row_and_flat_range(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "loss.csv", "lr,loss,step", [(1e-3, 0.5, 0)])
    assert_png(plotting.plot_loss(csv_path, tmp_path / "loss.png"))


def test_plot_loss_names_missing_column(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "loss.csv", "step,mse", [(0, 1.0)])
    with pytest.raises(ValueError, match="'loss'"):
        plotting.plot_loss(csv_path, tmp_path / "loss.png")
    assert_only(tmp_path, "loss.csv")


def bound_rows(decoder: float, num_timesteps: int = T) -> list[tuple]:
    t = np.arange(1, num_timesteps + 1)
    terms = 0.3 * np.exp(-t / 8) + 1e-4
    terms[0] = decoder
    return [(int(a), float(b), float(abs(b)) * 0.1) for a, b in zip(t, terms)]


@pytest.mark.parametrize(
    "unit, decoder", [("bits/dim", 0.9), ("nats/dim", -1.7), ("nats/dim", 0.0)]
)
def test_plot_bound_terms(tmp_path: Path, unit: str, decoder: float) -> None:
    csv_path = write_csv(tmp_path / "terms.csv", "t,term,stderr", bound_rows(decoder))
    assert_png(plotting.plot_bound_terms(csv_path, tmp_path / "bound.png", unit))
    assert_only(tmp_path, "terms.csv", "bound.png")


def test_plot_bound_terms_tolerates_missing_stderr_and_nonpositive_kl(tmp_path: Path) -> None:
    rows = [(t, term, "" if t % 2 else se) for t, term, se in bound_rows(0.5)]
    rows[5] = (6, -1e-12, 0.0)  # numerical noise in a KL term
    csv_path = write_csv(tmp_path / "terms.csv", "t,term,stderr", rows)
    assert_png(plotting.plot_bound_terms(csv_path, tmp_path / "bound.png", "bits/dim"))


def test_plot_bound_terms_rejects_unknown_unit(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "terms.csv", "t,term,stderr", bound_rows(0.5))
    with pytest.raises(ValueError, match="bits/dim"):
        plotting.plot_bound_terms(csv_path, tmp_path / "bound.png", "bpd")


def test_meta_kind_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="meta\\['kind'\\]"):
        plotting.plot_samples(swiss_roll(), {"kind": "points"}, tmp_path / "s.png")
    assert_only(tmp_path)


# --------------------------------------------------------------------------- atomic writes


def test_write_into_a_file_instead_of_a_folder_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(OSError):
        plotting.plot_schedule(linear_betas(), blocker / "schedule.png")
    with pytest.raises(OSError):
        plotting.save_image_grid(digit_images(), 17, blocker / "grid.png")
    assert_only(tmp_path, "not_a_dir")
    assert blocker.read_text() == "x"


def test_target_that_is_a_folder_leaves_no_partial_file(tmp_path: Path) -> None:
    (tmp_path / "fig.png").mkdir()
    with pytest.raises(OSError):
        plotting.plot_samples(swiss_roll(), VECTOR, tmp_path / "fig.png")
    with pytest.raises(OSError):
        plotting.save_image_grid(color_images(2), 256, tmp_path / "fig.png")
    assert_only(tmp_path, "fig.png")
    assert list((tmp_path / "fig.png").iterdir()) == []


def test_crash_while_writing_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "schedule.png"
    plotting.plot_schedule(linear_betas(), target)
    before = target.read_bytes()

    def crash_midway(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", crash_midway)
    with pytest.raises(RuntimeError, match="disk full"):
        plotting.plot_schedule(linear_betas(), target)
    assert target.read_bytes() == before
    assert_only(tmp_path, "schedule.png")


def test_crash_while_writing_grid_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash_midway(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        plotting.save_image_grid(digit_images(), 17, tmp_path / "grid.png")
    assert_only(tmp_path)


def test_import_and_plot_leave_matplotlib_global_state_alone(tmp_path: Path) -> None:
    """No pyplot, no backend switch: figures live on standalone Agg canvases."""
    code = (
        "import sys, matplotlib, numpy as np\n"
        # Raw rcParams value: matplotlib.get_backend() itself may import pyplot to resolve it.
        "before = dict.__getitem__(matplotlib.rcParams, 'backend')\n"
        "from ddpm import plotting\n"
        f"plotting.plot_schedule(np.linspace(1e-4, 0.02, 20), {str(tmp_path / 's.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert dict.__getitem__(matplotlib.rcParams, 'backend') == before\n"
    )
    repo_root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root)
    assert_png(tmp_path / "s.png")
