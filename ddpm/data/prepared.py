"""Prepared datasets on disk: train.npy, test.npy, the class labels of labelled datasets
and the meta.json that describes them, written atomically and checked against each other
when read.

Images are stored as their integer grey levels (uint8, [N, C, H, W]): the discretized
decoder needs K, and integers keep the prepared data exact and checkable. The Swiss roll
is continuous and stored as float32 [N, 2]. A labelled dataset (meta.json's num_classes
is an integer, null otherwise) also stores train_labels.npy and test_labels.npy: int64
[N] class indices, row i labelling example i of its split.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.data.registry import DatasetInfo
from ddpm.errors import DataError, DatasetNotFoundError
from ddpm.io import atomic_save_npy, atomic_write_json

TRAIN_FILE = "train.npy"
TEST_FILE = "test.npy"
TRAIN_LABELS_FILE = "train_labels.npy"
TEST_LABELS_FILE = "test_labels.npy"
META_FILE = "meta.json"
_LABEL_FILES = {"train": TRAIN_LABELS_FILE, "test": TEST_LABELS_FILE}
_META_KEYS = ("dataset", "kind", "shape", "num_levels", "num_classes", "train_size", "test_size", "source", "seed")


@dataclass(frozen=True)
class Prepared:
    """A prepared dataset: train and test arrays, their class labels (None for unlabelled
    data) and their ``meta.json`` description."""

    train: np.ndarray
    test: np.ndarray
    meta: dict[str, Any]
    train_labels: np.ndarray | None = None  # int64 [N] class indices, for labelled datasets
    test_labels: np.ndarray | None = None

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.meta["kind"], tuple(self.meta["shape"]), self.meta["num_levels"])


def write_prepared(out_dir: str | os.PathLike[str], prepared: Prepared) -> None:
    """Validate ``prepared`` and write train.npy, test.npy, the labels files of a labelled
    dataset (int64) and meta.json into ``out_dir``.

    Each file is written atomically; a previous meta.json is removed first and the new one
    goes last, and load_prepared checks the arrays against it, so an interrupted write
    cannot pass for a complete one. Label files of a previous labelled dataset are removed
    when this one has none. Arrays or labels that disagree with their meta are the
    caller's bug: ValueError, before anything is written.
    """
    out = Path(out_dir)
    _check_meta(prepared.meta, "Prepared.meta", ValueError)
    for split in ("train", "test"):
        _check_split(getattr(prepared, split), split, prepared.meta, f"Prepared.{split}", ValueError)
        _check_labels(getattr(prepared, f"{split}_labels"), split, prepared.meta, f"Prepared.{split}_labels",
                      ValueError)
    # A previous meta.json would describe a rewrite interrupted midway: old and new files
    # of the same sizes (another seed's split, labels of other images) would load as one.
    (out / META_FILE).unlink(missing_ok=True)
    atomic_save_npy(out / TRAIN_FILE, prepared.train)
    atomic_save_npy(out / TEST_FILE, prepared.test)
    for split, file in _LABEL_FILES.items():
        labels = getattr(prepared, f"{split}_labels")
        if labels is None:
            (out / file).unlink(missing_ok=True)  # a previous labelled dataset's, which meta.json no longer describes
        else:
            atomic_save_npy(out / file, labels.astype(np.int64))
    atomic_write_json(out / META_FILE, prepared.meta)


def load_prepared(out_dir: str | os.PathLike[str]) -> Prepared:
    """Read a prepared dataset written by write_prepared and check it against meta.json.

    DatasetNotFoundError when a file is missing; DataError naming the file, what meta.json
    says and what was found when a file is unreadable or shapes, sizes, dtypes, grey levels
    or class labels disagree (a labels file missing where meta.json has num_classes, too).
    The labels come back as int64, or None when meta.json's num_classes is null.
    """
    out = Path(out_dir)
    paths = {name: out / name for name in (META_FILE, TRAIN_FILE, TEST_FILE)}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"prepared dataset in {out} is incomplete: {', '.join(missing)} not found "
            f"(expected {', '.join(paths)})"
        )
    meta_path = paths[META_FILE]
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc})") from None
    _check_meta(meta, str(meta_path), DataError)
    arrays = {}
    for split, file in (("train", TRAIN_FILE), ("test", TEST_FILE)):
        arrays[split] = _load_npy(paths[file])
        _check_split(arrays[split], split, meta, f"{paths[file]} (checked against {meta_path})", DataError)
    if meta["num_classes"] is not None:
        for split, file in _LABEL_FILES.items():
            path = out / file
            if not path.is_file():
                raise DataError(
                    f"{path}: not found, but {meta_path} says num_classes={meta['num_classes']}: a labelled "
                    f"dataset stores its class labels in {TRAIN_LABELS_FILE} and {TEST_LABELS_FILE}"
                )
            labels = _load_npy(path)
            _check_labels(labels, split, meta, f"{path} (checked against {meta_path})", DataError)
            arrays[f"{split}_labels"] = labels.astype(np.int64, copy=False)
    return Prepared(meta=meta, **arrays)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None


def _check_meta(meta: Any, where: str, error: type[ValueError]) -> None:
    if not isinstance(meta, dict):
        raise error(f"{where}: expected a JSON object, found {type(meta).__name__}")
    missing = [key for key in _META_KEYS if key not in meta]
    if missing:
        raise error(f"{where}: missing keys {missing}; expected {list(_META_KEYS)}")
    kind, shape, num_levels = meta["kind"], meta["shape"], meta["num_levels"]
    if kind not in ("image", "vector"):
        raise error(f"{where}: kind: bad value {kind!r}; accepted values: image, vector")
    if not (isinstance(shape, list) and shape and all(_is_int(d) and d >= 1 for d in shape)):
        raise error(f"{where}: shape: bad value {shape!r}; accepted: a non-empty list of positive integers")
    if kind == "image" and not (_is_int(num_levels) and num_levels >= 2):
        raise error(f"{where}: num_levels: bad value {num_levels!r}; accepted for images: an integer >= 2")
    if kind == "vector" and num_levels is not None:
        raise error(f"{where}: num_levels: bad value {num_levels!r}; accepted for vectors: null")
    num_classes = meta["num_classes"]
    if num_classes is not None and not (_is_int(num_classes) and num_classes >= 2):
        raise error(f"{where}: num_classes: bad value {num_classes!r}; accepted: an integer >= 2, "
                    "or null for data without class labels")
    for key in ("train_size", "test_size"):
        if not (_is_int(meta[key]) and meta[key] >= 1):
            raise error(f"{where}: {key}: bad value {meta[key]!r}; accepted: an integer >= 1")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_split(array: Any, split: str, meta: dict[str, Any], where: str, error: type[ValueError]) -> None:
    """Check one split against meta: shape [N, *shape], dtype, and grey levels or finiteness."""
    if not isinstance(array, np.ndarray):
        raise error(f"{where}: expected a NumPy array, found {type(array).__name__}")
    expected = (meta[f"{split}_size"], *meta["shape"])
    if array.shape != expected:
        raise error(
            f"{where}: meta.json says {split}_size={meta[f'{split}_size']} examples of shape {meta['shape']}, "
            f"i.e. an array of shape {list(expected)}; found shape {list(array.shape)}"
        )
    if meta["kind"] == "image":
        if not np.issubdtype(array.dtype, np.integer):
            raise error(f"{where}: meta.json says kind 'image' (integer grey levels), found dtype {array.dtype}")
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > meta["num_levels"] - 1:
            raise error(
                f"{where}: meta.json says num_levels={meta['num_levels']}, so grey levels in "
                f"0..{meta['num_levels'] - 1}; found values from {low} to {high}"
            )
    else:
        if not np.issubdtype(array.dtype, np.floating):
            raise error(f"{where}: meta.json says kind 'vector' (floating point), found dtype {array.dtype}")
        if not np.isfinite(array).all():
            raise error(f"{where}: meta.json says kind 'vector'; found non-finite values (NaN or inf)")


def _check_labels(labels: Any, split: str, meta: dict[str, Any], where: str, error: type[ValueError]) -> None:
    """Check one split's labels against meta: none for num_classes null, else [N] integers in 0..num_classes-1."""
    num_classes, size = meta["num_classes"], meta[f"{split}_size"]
    if num_classes is None:
        if labels is not None:
            raise error(f"{where}: meta.json says num_classes=null (no class labels), found labels")
        return
    if not isinstance(labels, np.ndarray):
        raise error(f"{where}: meta.json says num_classes={num_classes}, so a NumPy array of class indices; "
                    f"found {type(labels).__name__}")
    if labels.shape != (size,):
        raise error(f"{where}: meta.json says {split}_size={size}, i.e. labels of shape [{size}]; "
                    f"found shape {list(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise error(f"{where}: meta.json says num_classes={num_classes} (integer class indices), "
                    f"found dtype {labels.dtype}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > num_classes - 1:
        raise error(f"{where}: meta.json says num_classes={num_classes}, so class indices in "
                    f"0..{num_classes - 1}; found values from {low} to {high}")
