"""Tests for ddpm.data: the sklearn datasets, K-level scaling, prepared-data files, and the
torchvision readers on small files written here in the real on-disk formats (no network).

User-caused problems raise ddpm.errors types (bad files: DataError; missing ones:
DatasetNotFoundError; a test_size the data cannot honour: ConfigError) whose messages never
name the pipeline; a caller's bug (an unknown name, float levels) stays a plain ValueError."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from ddpm.data import (
    DATASET_INFO,
    DATASETS,
    TEST_LABELS_FILE,
    TRAIN_LABELS_FILE,
    DataError,
    DatasetInfo,
    DatasetNotFoundError,
    Prepared,
    dataset_info,
    from_model_space,
    load_prepared,
    prepare_dataset,
    to_model_space,
    write_prepared,
)
from ddpm.errors import ConfigError, UserError
from ddpm.io import atomic_save_npy

REPO = Path(__file__).resolve().parents[2]

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail every connection at once, so download attempts are fast and never reach out."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# --- registry -----------------------------------------------------------------------------


def test_registry_lists_every_dataset_with_its_info() -> None:
    assert DATASETS == ("digits", "swissroll", "mnist", "fashion_mnist", "cifar10", "folder")
    assert set(DATASET_INFO) == set(DATASETS)
    assert dataset_info("digits") == DatasetInfo("image", (1, 8, 8), 17)
    assert dataset_info("swissroll") == DatasetInfo("vector", (2,), None)
    assert dataset_info("cifar10") == DatasetInfo("image", (3, 32, 32), 256)


def test_package_exports_every_public_name() -> None:
    import ddpm.data

    for name in ddpm.data.__all__:
        assert getattr(ddpm.data, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ddpm.data.nope  # noqa: B018


def test_config_loads_only_the_registry_which_needs_no_third_party_modules() -> None:
    code = "import sys, ddpm.config; print(*sorted(m for m in sys.modules if m.startswith('ddpm.data')))"
    config = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert config.stdout.split() == ["ddpm.data", "ddpm.data.registry"]
    code = "import sys, ddpm.data.registry; print(any(m in sys.modules for m in ('numpy', 'torch')))"
    registry = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert registry.stdout.strip() == "False"


def test_unknown_dataset_names_key_value_and_accepted_names() -> None:
    with pytest.raises(ValueError) as info:
        prepare_dataset("minst", "unused", seed=0, test_size=10)
    assert not isinstance(info.value, UserError)  # params are validated before; here it is a caller's bug
    message = str(info.value)
    assert "dataset" in message and "'minst'" in message
    assert all(name in message for name in DATASETS)
    assert "did you mean 'mnist'" in message


# --- sklearn datasets -----------------------------------------------------------------------


def test_digits_prepare_shapes_levels_and_meta() -> None:
    prepared = prepare_dataset("digits", "unused", seed=0, test_size=300)
    assert prepared.train.shape == (1497, 1, 8, 8) and prepared.test.shape == (300, 1, 8, 8)
    assert prepared.train.dtype == np.uint8 and prepared.test.dtype == np.uint8
    both = np.concatenate([prepared.train, prepared.test])
    assert both.min() == 0 and both.max() == 16
    assert prepared.meta == {
        "dataset": "digits",
        "kind": "image",
        "shape": [1, 8, 8],
        "num_levels": 17,
        "num_classes": 10,
        "train_size": 1497,
        "test_size": 300,
        "source": prepared.meta["source"],
        "seed": 0,
    }
    assert "load_digits" in prepared.meta["source"]
    assert prepared.info == DATASET_INFO["digits"]


def test_digits_split_is_a_seeded_partition_of_the_bundled_images() -> None:
    first = prepare_dataset("digits", "unused", seed=3, test_size=300)
    again = prepare_dataset("digits", "unused", seed=3, test_size=300)
    other = prepare_dataset("digits", "unused", seed=4, test_size=300)
    np.testing.assert_array_equal(first.train, again.train)
    np.testing.assert_array_equal(first.test, again.test)
    assert not np.array_equal(first.test, other.test)
    # Train and test together are the bundled images, each used once: a partition by index.
    rows = np.concatenate([first.train, first.test]).reshape(1797, 64)
    bundled = load_digits().images.reshape(1797, 64).astype(np.uint8)
    np.testing.assert_array_equal(np.unique(rows, axis=0, return_counts=True)[1],
                                  np.unique(bundled, axis=0, return_counts=True)[1])
    np.testing.assert_array_equal(np.unique(rows, axis=0), np.unique(bundled, axis=0))


def test_digits_labels_follow_their_images() -> None:
    # The 1797 bundled images are all distinct, so each prepared image names the one sklearn
    # image it is; its label must be sklearn's target of that image, in whichever split and
    # position the seeded split put it.
    digits = load_digits()
    index_of = {image.tobytes(): i for i, image in enumerate(digits.images.astype(np.uint8))}
    assert len(index_of) == 1797
    for seed, test_size in ((0, 300), (7, 1), (1, 1796)):
        prepared = prepare_dataset("digits", "unused", seed=seed, test_size=test_size)
        assert prepared.meta["num_classes"] == 10
        for split in ("train", "test"):
            images, labels = getattr(prepared, split), getattr(prepared, f"{split}_labels")
            assert labels.dtype == np.int64 and labels.shape == (len(images),)
            np.testing.assert_array_equal(labels, digits.target[[index_of[image[0].tobytes()] for image in images]])


# SHA-256 of train.npy and test.npy as written by the code before labels existed (commit
# a9895f2; (0, 300) are params.yaml's seed and data.test_size, whose files dvc.lock records):
# storing labels must not change one byte of the images that training reads.
OLD_IMAGE_DIGESTS = {
    (0, 300): ("e0ad525f4ed683e68974b96c32a0b2ad5edc0fdebdc9d9f222a1ec1647ac599a",
               "aab9e90549892863c701361f6def0cf10d83ea7a08a3e32bafe60ab877888555"),
    (3, 100): ("b88861d8bbdecb02d9f13c937f5937e736c81e23c41625be18bd28f0100e4105",
               "c6e97478f8fbbec16278a9ff41f8d25805d35c6d39a6fd331ee3aafdf9b89ad9"),
}


@pytest.mark.parametrize(("seed", "test_size"), list(OLD_IMAGE_DIGESTS))
def test_digits_image_files_are_byte_identical_to_those_written_before_labels(
    tmp_path: Path, seed: int, test_size: int
) -> None:
    write_prepared(tmp_path, prepare_dataset("digits", "unused", seed=seed, test_size=test_size))
    digests = tuple(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in ("train.npy", "test.npy"))
    assert digests == OLD_IMAGE_DIGESTS[seed, test_size]


@pytest.mark.parametrize("test_size", [0, 1797, 5000])
def test_digits_rejects_a_test_size_that_leaves_no_split(test_size: int) -> None:
    with pytest.raises(ConfigError, match=rf"data\.test_size={test_size} is not accepted for digits.*1\.\.1796"):
        prepare_dataset("digits", "unused", seed=0, test_size=test_size)


def test_swissroll_rejects_an_empty_test_set() -> None:
    with pytest.raises(ConfigError, match=r"data\.test_size=0 is not accepted for swissroll.*>= 1"):
        prepare_dataset("swissroll", "unused", seed=0, test_size=0, num_train_vectors=10)


def test_swissroll_shapes_and_determinism() -> None:
    prepared = prepare_dataset("swissroll", "unused", seed=0, test_size=50, num_train_vectors=200)
    assert prepared.train.shape == (200, 2) and prepared.test.shape == (50, 2)
    assert prepared.train.dtype == np.float32 and prepared.test.dtype == np.float32
    assert prepared.meta["kind"] == "vector" and prepared.meta["num_levels"] is None
    assert prepared.meta["num_classes"] is None  # unlabelled: no classes, no labels
    assert prepared.train_labels is None and prepared.test_labels is None
    assert (prepared.meta["train_size"], prepared.meta["test_size"]) == (200, 50)
    again = prepare_dataset("swissroll", "unused", seed=0, test_size=50, num_train_vectors=200)
    other = prepare_dataset("swissroll", "unused", seed=1, test_size=50, num_train_vectors=200)
    np.testing.assert_array_equal(prepared.train, again.train)
    np.testing.assert_array_equal(prepared.test, again.test)
    assert not np.array_equal(prepared.train, other.train)
    assert not np.array_equal(prepared.train[:50], prepared.test)


def test_swissroll_without_noise_lies_on_the_scaled_spiral() -> None:
    # make_swiss_roll puts (x, z) = t (cos t, sin t) with t in [1.5 pi, 4.5 pi]; /10 scales it.
    points = prepare_dataset("swissroll", "unused", seed=0, test_size=10, num_train_vectors=500, noise=0.0).train
    t = np.hypot(points[:, 0], points[:, 1]) * 10
    assert t.min() >= 1.5 * np.pi - 1e-4 and t.max() <= 4.5 * np.pi + 1e-4
    np.testing.assert_allclose(points[:, 0] * 10, t * np.cos(t), atol=1e-4)


# --- model space --------------------------------------------------------------------------


@pytest.mark.parametrize("num_levels", [17, 256])
def test_model_space_round_trip_and_exact_endpoints(num_levels: int) -> None:
    levels = np.arange(num_levels, dtype=np.uint8)
    x = to_model_space(levels, num_levels)
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    assert x[0] == -1.0 and x[-1] == 1.0
    exact = 2 * np.arange(num_levels, dtype=np.float64) / (num_levels - 1) - 1
    np.testing.assert_allclose(x, exact, rtol=0, atol=2.0**-24)
    back = from_model_space(x, num_levels)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, levels)

    x_torch = to_model_space(torch.from_numpy(levels), num_levels)
    assert isinstance(x_torch, torch.Tensor) and x_torch.dtype == torch.float32
    np.testing.assert_array_equal(x_torch.numpy(), x)
    back_torch = from_model_space(x_torch, num_levels)
    assert isinstance(back_torch, torch.Tensor) and back_torch.dtype == torch.uint8
    np.testing.assert_array_equal(back_torch.numpy(), levels)


def test_from_model_space_rounds_to_the_nearest_level_and_clips() -> None:
    half_step = 1.0 / 16  # K = 17: levels are 2/16 apart
    x = np.array([-3.0, -1.0 + 0.9 * half_step, -1.0 + 1.1 * half_step, 0.0, 1.0 - 0.9 * half_step, 2.5])
    np.testing.assert_array_equal(from_model_space(x, 17), [0, 0, 1, 8, 16, 16])
    np.testing.assert_array_equal(from_model_space(torch.tensor(x, dtype=torch.bfloat16), 17).numpy(),
                                  [0, 0, 1, 8, 16, 16])


def test_model_space_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"0\.\.16.*from 0 to 17") as info:
        to_model_space(np.array([0, 17]), 17)
    assert not isinstance(info.value, UserError)  # levels come from code, not from a user
    with pytest.raises(TypeError, match="integer grey levels"):
        to_model_space(torch.tensor([0.0, 1.0]), 17)
    with pytest.raises(ValueError, match="num_levels: bad value 1"):
        to_model_space(np.array([0]), 1)
    with pytest.raises(ValueError, match="NaN"):
        from_model_space(np.array([0.0, np.nan]), 256)


# --- prepared files -------------------------------------------------------------------------


@pytest.fixture
def digits_dir(tmp_path: Path) -> Path:
    out = tmp_path / "prepared"
    write_prepared(out, prepare_dataset("digits", "unused", seed=0, test_size=300))
    return out


def test_write_load_round_trip(tmp_path: Path) -> None:
    label_files = {"digits": ["test_labels.npy", "train_labels.npy"], "swissroll": []}
    for name in ("digits", "swissroll"):
        prepared = prepare_dataset(name, "unused", seed=1, test_size=30, num_train_vectors=100)
        write_prepared(tmp_path / name, prepared)
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == sorted(
            ["meta.json", "test.npy", "train.npy", *label_files[name]])
        loaded = load_prepared(tmp_path / name)
        assert loaded.meta == prepared.meta
        for split in ("train", "test"):
            np.testing.assert_array_equal(getattr(loaded, split), getattr(prepared, split))
            assert getattr(loaded, split).dtype == getattr(prepared, split).dtype
        if name == "swissroll":
            assert loaded.train_labels is None and loaded.test_labels is None
            continue
        for split, file in (("train", TRAIN_LABELS_FILE), ("test", TEST_LABELS_FILE)):
            labels = getattr(loaded, f"{split}_labels")
            assert labels.dtype == np.int64 and np.load(tmp_path / name / file).dtype == np.int64
            np.testing.assert_array_equal(labels, getattr(prepared, f"{split}_labels"))


def test_write_stores_labels_as_int64_and_drops_those_of_a_previous_dataset(tmp_path: Path) -> None:
    prepared = prepare_dataset("digits", "unused", seed=0, test_size=300)
    narrow = dataclasses.replace(prepared, train_labels=prepared.train_labels.astype(np.uint8))
    write_prepared(tmp_path, narrow)
    assert np.load(tmp_path / TRAIN_LABELS_FILE).dtype == np.int64
    np.testing.assert_array_equal(load_prepared(tmp_path).train_labels, prepared.train_labels)
    # Label files left beside an unlabelled dataset would label nothing: they go.
    write_prepared(tmp_path, prepare_dataset("swissroll", "unused", seed=0, test_size=30, num_train_vectors=100))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "test.npy", "train.npy"]
    assert load_prepared(tmp_path).train_labels is None


def test_an_interrupted_rewrite_is_not_taken_for_a_complete_dataset(tmp_path: Path, monkeypatch) -> None:
    # Rewriting seed 0's split with seed 1's: the sizes agree, so only meta.json's absence can
    # tell that train.npy (seed 1) and test.npy (seed 0) no longer belong together.
    import ddpm.data.prepared as prepared_module

    write_prepared(tmp_path, prepare_dataset("digits", "unused", seed=0, test_size=300))
    save = prepared_module.atomic_save_npy

    def fail_on_test(path: Path, array: np.ndarray) -> Path:
        if Path(path).name == "test.npy":
            raise KeyboardInterrupt
        return save(path, array)

    monkeypatch.setattr(prepared_module, "atomic_save_npy", fail_on_test)
    with pytest.raises(KeyboardInterrupt):
        write_prepared(tmp_path, prepare_dataset("digits", "unused", seed=1, test_size=300))
    with pytest.raises(DatasetNotFoundError, match="meta.json not found"):
        load_prepared(tmp_path)


def _train_with_a_level_above_16(prepared: Path) -> np.ndarray:
    train = np.load(prepared / "train.npy")
    train[5, 0, 3, 3] = 17
    return train


@pytest.mark.parametrize(("file", "make", "pattern"), [
    ("train.npy", lambda _: np.zeros((1497, 1, 8, 7), dtype=np.uint8),
     r"train\.npy.*meta\.json.*\[1497, 1, 8, 8\].*\[1497, 1, 8, 7\]"),
    ("test.npy", lambda _: np.zeros((299, 1, 8, 8), dtype=np.uint8), r"test\.npy.*test_size=300.*\[299, 1, 8, 8\]"),
    ("train.npy", _train_with_a_level_above_16, r"train\.npy.*num_levels=17.*0\.\.16.*to 17"),
    ("test.npy", lambda _: np.zeros((300, 1, 8, 8), dtype=np.float32), r"test\.npy.*integer grey levels.*float32"),
], ids=["shape", "size", "grey-level-range", "float-levels"])
def test_load_rejects_an_array_that_disagrees_with_meta(digits_dir: Path, file: str, make, pattern: str) -> None:
    atomic_save_npy(digits_dir / file, make(digits_dir))
    with pytest.raises(DataError, match=pattern) as info:
        load_prepared(digits_dir)
    assert "dvc" not in str(info.value)


@pytest.mark.parametrize(("file", "content", "pattern"), [
    ("meta.json", b"{not json", r"meta\.json: not valid JSON"),
    ("meta.json", b"[1, 2]", r"meta\.json: expected a JSON object, found list"),
    ("meta.json", b'{"dataset": "digits"}', r"meta\.json: missing keys \['kind'"),
    ("train.npy", b"not an array", r"train\.npy: not a readable \.npy array"),
    ("test_labels.npy", b"not an array", r"test_labels\.npy: not a readable \.npy array"),
    ("meta.json", b'{"dataset": "digits", "kind": "image", "shape": [1, 8, 8], "num_levels": 17, "num_classes": 1, '
                  b'"train_size": 1497, "test_size": 300, "source": "x", "seed": 0}',
     r"meta\.json: num_classes: bad value 1; accepted: an integer >= 2, or null"),
])
def test_load_rejects_unreadable_files_as_data_errors(digits_dir: Path, file: str, content: bytes,
                                                      pattern: str) -> None:
    (digits_dir / file).write_bytes(content)
    with pytest.raises(DataError, match=pattern) as info:
        load_prepared(digits_dir)
    assert "dvc" not in str(info.value)


@pytest.mark.parametrize("missing", ["train.npy", "test.npy", "meta.json"])
def test_load_names_a_missing_file_without_naming_the_pipeline(digits_dir: Path, missing: str) -> None:
    (digits_dir / missing).unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_prepared(digits_dir)
    assert missing in str(info.value) and str(digits_dir) in str(info.value)
    assert "dvc" not in str(info.value)


def test_write_rejects_arrays_that_disagree_with_meta(tmp_path: Path) -> None:
    prepared = prepare_dataset("digits", "unused", seed=0, test_size=300)
    bad = Prepared(train=prepared.train[:10], test=prepared.test, meta=prepared.meta)
    with pytest.raises(ValueError, match="train_size=1497") as info:
        write_prepared(tmp_path / "out", bad)
    assert not isinstance(info.value, UserError)  # arrays built by code: a caller's bug
    assert not (tmp_path / "out" / "meta.json").exists()


@pytest.mark.parametrize(("file", "make", "pattern"), [
    ("train_labels.npy", lambda d: np.load(d / "train_labels.npy")[:-1],
     r"train_labels\.npy \(checked against .*meta\.json\): meta\.json says train_size=1497, i\.e\. labels of "
     r"shape \[1497\]; found shape \[1496\]"),
    ("test_labels.npy", lambda d: np.load(d / "test_labels.npy")[:, None],
     r"test_labels\.npy.*test_size=300.*\[300\]; found shape \[300, 1\]"),
    ("test_labels.npy", lambda d: np.where(np.arange(300) == 7, 10, np.load(d / "test_labels.npy")),
     r"test_labels\.npy.*num_classes=10, so class indices in 0\.\.9; found values from 0 to 10"),
    ("train_labels.npy", lambda d: np.where(np.arange(1497) == 0, -1, np.load(d / "train_labels.npy")),
     r"train_labels\.npy.*0\.\.9; found values from -1 to 9"),
    ("train_labels.npy", lambda d: np.load(d / "train_labels.npy").astype(np.float64),
     r"train_labels\.npy.*num_classes=10 \(integer class indices\), found dtype float64"),
], ids=["length", "shape", "above-range", "negative", "float"])
def test_load_rejects_labels_that_disagree_with_meta(digits_dir: Path, file: str, make, pattern: str) -> None:
    atomic_save_npy(digits_dir / file, make(digits_dir))
    with pytest.raises(DataError, match=pattern) as info:
        load_prepared(digits_dir)
    assert "dvc" not in str(info.value)


@pytest.mark.parametrize("missing", [TRAIN_LABELS_FILE, TEST_LABELS_FILE])
def test_load_names_a_missing_labels_file_and_what_meta_says(digits_dir: Path, missing: str) -> None:
    (digits_dir / missing).unlink()
    with pytest.raises(DataError) as info:
        load_prepared(digits_dir)
    message = str(info.value)
    assert message.startswith(f"{digits_dir / missing}: not found")
    assert "meta.json says num_classes=10" in message and "dvc" not in message


def test_load_refuses_a_dataset_prepared_before_labels_naming_the_missing_key(digits_dir: Path) -> None:
    # The layout the code wrote before labels: no labels files, no num_classes in meta.json.
    meta = json.loads((digits_dir / "meta.json").read_text())
    del meta["num_classes"]
    (digits_dir / "meta.json").write_text(json.dumps(meta))
    for file in (TRAIN_LABELS_FILE, TEST_LABELS_FILE):
        (digits_dir / file).unlink()
    with pytest.raises(DataError, match=r"meta\.json: missing keys \['num_classes'\]; expected \[.*'num_classes'"):
        load_prepared(digits_dir)


@pytest.mark.parametrize(("dataset", "labels", "pattern"), [
    ("digits", None, r"Prepared\.train_labels: meta\.json says num_classes=10.*found NoneType"),
    ("swissroll", np.zeros(100, dtype=np.int64), r"Prepared\.train_labels: meta\.json says num_classes=null"),
    ("digits", np.zeros(1496, dtype=np.int64), r"Prepared\.train_labels: .*train_size=1497.*found shape \[1496\]"),
])
def test_write_rejects_labels_that_disagree_with_meta(tmp_path: Path, dataset: str, labels, pattern: str) -> None:
    prepared = prepare_dataset(dataset, "unused", seed=0, test_size=300, num_train_vectors=100)
    with pytest.raises(ValueError, match=pattern) as info:
        write_prepared(tmp_path / "out", dataclasses.replace(prepared, train_labels=labels))
    assert not isinstance(info.value, UserError)  # labels built by code: a caller's bug
    assert not (tmp_path / "out").exists()


# --- torchvision datasets on files in their real formats -------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes: magic 0x0000080D (D dims), big-endian sizes, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(f">I{array.ndim}I", 0x0800 + array.ndim, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_like(
    root: Path, folder: str, n_train: int = 20, n_test: int = 10
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """IDX image and label files of random images; returns (images, labels) keyed "train", "t10k".

    The labels are a shuffled 0, 1, ..., 9, 0, 1, ...: each 10 consecutive images have
    distinct labels, so labels shifted or read in another order than the images show.
    """
    rng = np.random.default_rng(0)
    images = {
        "train": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "t10k": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
    }
    images["train"][0] = 0
    images["train"][1] = 255
    labels = {split: rng.permutation(len(array)) % 10 for split, array in images.items()}
    for split, array in images.items():
        write_idx(root / folder / "raw" / f"{split}-images-idx3-ubyte", array)
        write_idx(root / folder / "raw" / f"{split}-labels-idx1-ubyte", labels[split])
    return images, labels


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
@pytest.mark.parametrize("download", [False, True])
def test_idx_datasets_read_exactly_what_was_written(
    tmp_path: Path, no_network: None, name: str, folder: str, download: bool
) -> None:
    images, _ = write_mnist_like(tmp_path, folder)
    prepared = prepare_dataset(name, tmp_path, seed=0, test_size=0, download=download)
    assert prepared.train.dtype == np.uint8 and prepared.train.shape == (20, 1, 28, 28)
    np.testing.assert_array_equal(prepared.train[:, 0], images["train"])
    np.testing.assert_array_equal(prepared.test[:, 0], images["t10k"])
    assert prepared.meta["num_levels"] == 256 and prepared.meta["shape"] == [1, 28, 28]
    assert (prepared.meta["train_size"], prepared.meta["test_size"]) == (20, 10)


def test_official_test_split_subset_is_seeded_and_bounded(tmp_path: Path) -> None:
    images, _ = write_mnist_like(tmp_path, "MNIST")
    subset = prepare_dataset("mnist", tmp_path, seed=5, test_size=4, download=False)
    again = prepare_dataset("mnist", tmp_path, seed=5, test_size=4, download=False)
    np.testing.assert_array_equal(subset.test, again.test)
    assert subset.meta["test_size"] == 4 and "subset of 4 of the 10" in subset.meta["source"]
    matches = [int(np.flatnonzero((images["t10k"] == image).all(axis=(1, 2)))[0]) for image in subset.test[:, 0]]
    assert matches == sorted(set(matches))
    with pytest.raises(ConfigError, match=r"data\.test_size=11 is not accepted for mnist.*1\.\.10"):
        prepare_dataset("mnist", tmp_path, seed=5, test_size=11, download=False)


def _positions(written: np.ndarray, images: np.ndarray) -> list[int]:
    """For each image, the position of the identical one among those written (all distinct)."""
    flat = written.reshape(len(written), -1)
    return [int(np.flatnonzero((flat == image.reshape(-1)).all(axis=1))[0]) for image in images]


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
@pytest.mark.parametrize("test_size", [0, 4])
def test_idx_labels_follow_their_images(tmp_path: Path, name: str, folder: str, test_size: int) -> None:
    images, labels = write_mnist_like(tmp_path, folder)
    prepared = prepare_dataset(name, tmp_path, seed=5, test_size=test_size, download=False)
    assert prepared.meta["num_classes"] == 10
    for split, key in (("train", "train"), ("test", "t10k")):
        got = getattr(prepared, f"{split}_labels")
        positions = _positions(images[key], getattr(prepared, split)[:, 0])
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, labels[key][positions])
    # The seeded subset is not the first test_size images, so labels cut without its indices fail.
    assert test_size == 0 or positions != list(range(test_size))


def test_idx_labels_outside_the_ten_classes_are_named(tmp_path: Path) -> None:
    _, labels = write_mnist_like(tmp_path, "MNIST")
    labels["t10k"][3] = 12
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", labels["t10k"])
    pattern = r"t10k-labels-idx1-ubyte: labels must be class indices 0\.\.9, found values from 0 to 12"
    with pytest.raises(DataError, match=pattern):
        prepare_dataset("mnist", tmp_path, seed=0, test_size=0, download=False)


@pytest.mark.parametrize("download", [False, True])
def test_missing_idx_files_name_the_files_folder_and_url(tmp_path: Path, no_network: None, download: bool) -> None:
    raw = tmp_path / "data" / "raw"
    with pytest.raises(DatasetNotFoundError) as info:
        prepare_dataset("mnist", raw, seed=0, test_size=0, download=download)
    message = str(info.value)
    for name in IDX_FILES:
        assert str(raw / "MNIST" / "raw" / name) in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message
    assert ("download failed" in message) == download
    assert socket.getdefaulttimeout() is None


def test_idx_wrong_magic_number_is_reported(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, "MNIST")
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[0:4] = struct.pack(">I", 0x00000801)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: wrong magic number 0x00000801; expected 0x00000803"):
        prepare_dataset("mnist", tmp_path, seed=0, test_size=0, download=False)


def test_idx_truncated_file_is_reported(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, "MNIST")
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as info:
        prepare_dataset("mnist", tmp_path, seed=0, test_size=0, download=False)
    message = str(info.value)
    assert "train-images-idx3-ubyte: truncated" in message and "20 x 28 x 28 = 15680" in message


def test_idx_wrong_image_size_is_reported(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, "MNIST")
    write_idx(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte", np.zeros((20, 32, 32)))
    pattern = r"train-images-idx3-ubyte: holds items of shape \[32, 32\], expected \[28, 28\]"
    with pytest.raises(DataError, match=pattern):
        prepare_dataset("mnist", tmp_path, seed=0, test_size=0, download=False)


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (SHORT_BINSTRING/BINSTRING), as the official CIFAR-10
    batches were pickled by Python 2's cPickle; torchvision loads them with latin1 decoding."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_cifar_pickle(path: Path, obj: dict) -> None:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    # Name NumPy's reconstructor as the official files (NumPy 1.x era) do.
    path.write_bytes(buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


def write_cifar10(
    root: Path, per_batch: int = 4, n_test: int = 6
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """CIFAR-10 python batches: dicts with b"data" uint8 [N, 3072] (1024 red, 1024 green, 1024
    blue values, each plane row-major), b"labels", b"batch_label", b"filenames". Returns the
    rows and the labels of each split ("train", "test"); labels are distinct within a batch
    (for per_batch, n_test <= 10), so labels attached to the wrong image show."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = {"train": rng.integers(0, 256, size=(5 * per_batch, 3072), dtype=np.uint8),
            "test": rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)}
    rows["train"][0] = np.repeat(np.array([10, 20, 30], dtype=np.uint8), 1024)  # a flat (R, G, B) image
    labels = {"train": np.concatenate([rng.permutation(10)[:per_batch] for _ in range(5)]),
              "test": rng.permutation(10)[:n_test]}
    batches = [(f"data_batch_{i + 1}", slice(i * per_batch, (i + 1) * per_batch), "train") for i in range(5)]
    for name, rows_of_batch, split in batches + [("test_batch", slice(None), "test")]:
        data = rows[split][rows_of_batch]
        write_cifar_pickle(folder / name, {
            b"batch_label": f"{name} (test data)".encode(),
            b"labels": [int(v) for v in labels[split][rows_of_batch]],
            b"data": data,
            b"filenames": [f"image_{j}.png".encode() for j in range(len(data))],
        })
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    write_cifar_pickle(folder / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": names,
                                                 b"num_vis": 3072})
    return rows, labels


@pytest.mark.parametrize("download", [False, True])
def test_cifar10_reads_exactly_what_was_written_in_rgb_planes(tmp_path: Path, no_network: None, download: bool) -> None:
    rows, _ = write_cifar10(tmp_path)
    prepared = prepare_dataset("cifar10", tmp_path, seed=0, test_size=0, download=download)
    assert prepared.train.dtype == np.uint8
    assert prepared.train.shape == (20, 3, 32, 32) and prepared.test.shape == (6, 3, 32, 32)
    np.testing.assert_array_equal(prepared.train[0, :, 5, 7], [10, 20, 30])
    for split in ("train", "test"):
        planes = rows[split].reshape(-1, 3, 1024)
        np.testing.assert_array_equal(getattr(prepared, split).reshape(-1, 3, 1024), planes)
    assert prepared.meta["shape"] == [3, 32, 32] and prepared.meta["num_levels"] == 256


@pytest.mark.parametrize("test_size", [0, 3])
def test_cifar10_labels_follow_their_images(tmp_path: Path, test_size: int) -> None:
    rows, labels = write_cifar10(tmp_path)
    prepared = prepare_dataset("cifar10", tmp_path, seed=2, test_size=test_size, download=False)
    assert prepared.meta["num_classes"] == 10
    for split in ("train", "test"):
        got = getattr(prepared, f"{split}_labels")
        positions = _positions(rows[split], getattr(prepared, split))
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, labels[split][positions])
    assert test_size == 0 or positions != list(range(test_size))


@pytest.mark.parametrize(("bad", "pattern"), [
    (10, r"b'labels' of test_batch: labels must be class indices 0\.\.9, found values from \d to 10"),
    (b"cat", r"b'labels' of test_batch: labels must be a list of integer class indices"),
])
def test_cifar10_labels_that_are_not_class_indices_are_named(tmp_path: Path, bad, pattern: str) -> None:
    rows, labels = write_cifar10(tmp_path)
    write_cifar_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [int(v) for v in labels["test"][:-1]] + [bad],
        b"data": rows["test"],
        b"filenames": [b"x.png"] * len(rows["test"]),
    })
    with pytest.raises(DataError, match=pattern):
        prepare_dataset("cifar10", tmp_path, seed=0, test_size=0, download=False)


def test_missing_cifar10_files_fail_fast_with_their_names(tmp_path: Path, no_network: None) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        prepare_dataset("cifar10", tmp_path, seed=0, test_size=0, download=True)
    message = str(info.value)
    assert "1 of 7 files missing" in message and "download failed" in message
    for name in CIFAR_FILES:
        assert str(tmp_path / "cifar-10-batches-py" / name) in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


def test_cifar10_truncated_batch_is_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError, match=r"data_batch_3: truncated or not a pickle"):
        prepare_dataset("cifar10", tmp_path, seed=0, test_size=0, download=False)


class _Touch:
    """Unpickles by calling Path(path).touch(): a stand-in for a pickle that runs code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.path),))


def test_cifar10_pickle_importing_other_code_is_refused_unexecuted(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "executed"
    payload = pickle.dumps(_Touch(str(marker)), protocol=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(payload)
    with pytest.raises(DataError, match=r"data_batch_2: the pickle imports .*never do"):
        prepare_dataset("cifar10", tmp_path, seed=0, test_size=0, download=False)
    assert not marker.exists()


def test_cifar10_wrong_row_length_is_reported(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    write_cifar_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [0] * 6,
        b"data": np.zeros((6, 3000), dtype=np.uint8),
        b"filenames": [b"x.png"] * 6,
    })
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*test_batch.*3072"):
        prepare_dataset("cifar10", tmp_path, seed=0, test_size=0, download=False)


# --- the prepare stage: the library says what is wrong, the stage what to do -----------------


def run_prepare_stage(tmp_path: Path, raw: Path, dataset: str, test_size: int) -> int:
    import yaml

    from stages import prepare

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"], params["data"]["test_size"] = dataset, test_size
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return prepare.main(["--params", str(tmp_path / "params.yaml"), "--raw", str(raw), "--out", str(tmp_path / "out")])


def test_prepare_stage_reports_missing_raw_files_with_the_pipeline_hint(
    tmp_path: Path, no_network: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_prepare_stage(tmp_path, tmp_path / "raw", "mnist", 0) == 2
    err = capsys.readouterr().err
    assert "prepare: error: MNIST not found" in err and "Traceback" not in err
    assert "prepare: hint:" in err and "dvc repro prepare" in err
    assert not (tmp_path / "out").exists()


def test_prepare_stage_reports_a_damaged_raw_file_with_the_pipeline_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_mnist_like(tmp_path / "raw", "MNIST")
    path = tmp_path / "raw" / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">I", 0x00000801) + path.read_bytes()[4:])
    assert run_prepare_stage(tmp_path, tmp_path / "raw", "mnist", 0) == 2
    err = capsys.readouterr().err
    assert "prepare: error:" in err and "t10k-images-idx3-ubyte: wrong magic number" in err
    assert "prepare: hint: replace the damaged file named above (a raw download" in err and "Traceback" not in err


def test_prepare_stage_reports_a_test_size_larger_than_the_test_split_as_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_mnist_like(tmp_path / "raw", "MNIST")
    assert run_prepare_stage(tmp_path, tmp_path / "raw", "mnist", 11) == 2
    err = capsys.readouterr().err
    assert "prepare: error: data.test_size=11 is not accepted for mnist" in err
    assert "prepare: hint: fix the key" in err and "Traceback" not in err


def test_auto_test_size_keeps_300_and_a_small_official_test_split_whole(tmp_path: Path) -> None:
    """data.test_size's default, auto: the 300 held-out digits and Swiss-roll points of before, a
    subset of 300 of a torchvision test split, or all of a split that holds no more than that."""
    auto, explicit = (prepare_dataset("digits", "unused", seed=0, test_size=size) for size in ("auto", 300))
    assert auto.meta == explicit.meta and np.array_equal(auto.test, explicit.test)
    assert prepare_dataset("swissroll", "unused", seed=0, test_size="auto", num_train_vectors=10).test.shape == (300, 2)
    write_mnist_like(tmp_path, "MNIST")  # 10 test images
    small = prepare_dataset("mnist", tmp_path, seed=0, test_size="auto", download=False)
    assert small.meta["test_size"] == 10 and small.meta["source"].endswith("official test split (10 images)")


def test_the_prepare_stage_starts_without_torch():
    """Preparing data needs NumPy only (its split seed comes from ddpm.streams): importing torch
    took 2 of the stage's 2.7 CPU seconds on the digits."""
    code = "import sys, stages.prepare; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
