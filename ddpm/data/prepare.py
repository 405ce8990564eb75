"""Preparation: the train and test arrays of a registered dataset and their meta.

``digits`` (sklearn's bundled 8x8 digits, K = 17) and ``swissroll`` need no files;
``mnist``, ``fashion_mnist`` and ``cifar10`` are read from ``raw_dir`` through
torchvision's own dataset classes, which download them on first use when allowed;
``folder`` reads the user's own PNG and JPEG files (``ddpm.data.folder``).
Every dataset but the Swiss roll is labelled (a folder when it has class subfolders): the
class labels go through the same split and subset as the images, row for row.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.data import cifar, idx
from ddpm.data import folder as image_folder
from ddpm.data.download import LabelledSplit
from ddpm.data.prepared import Prepared
from ddpm.data.registry import DATASET_INFO, check_name
from ddpm.errors import ConfigError
from ddpm.streams import stream_seed

logger = logging.getLogger(__name__)

# Classes of the labelled datasets; the Swiss roll has none.
NUM_CLASSES: dict[str, int] = {
    "digits": 10, "mnist": idx.NUM_CLASSES, "fashion_mnist": idx.NUM_CLASSES, "cifar10": cifar.NUM_CLASSES,
}
# data.test_size auto: 300 held-out examples (digits' split, the Swiss roll's test draw, a subset of
# a torchvision test split); a folder of one's own images holds out a tenth of its images, at
# least one and at most this many, so that a few dozen images leave most of them to train on.
AUTO = "auto"
DEFAULT_TEST_SIZE = 300
FOLDER_TEST_FRACTION = 10


def auto_test_size(name: str, num_examples: int) -> int:
    """What data.test_size auto holds out of dataset ``name`` with ``num_examples`` examples (for
    a torchvision dataset: in its official test split): ``DEFAULT_TEST_SIZE``; for a torchvision
    test split no larger than that, 0 (all of it); for a folder, a tenth of its images rounded
    down, clipped to 1..DEFAULT_TEST_SIZE."""
    if name == "folder":
        return min(DEFAULT_TEST_SIZE, max(1, num_examples // FOLDER_TEST_FRACTION))
    if name in ("mnist", "fashion_mnist", "cifar10") and num_examples <= DEFAULT_TEST_SIZE:
        return 0
    return DEFAULT_TEST_SIZE


def prepare_dataset(
    name: str,
    raw_dir: str | os.PathLike[str],
    *,
    seed: int,
    test_size: int | str,
    num_train_vectors: int = 10000,
    noise: float = 0.5,
    download: bool = True,
    folder: str | os.PathLike[str] = "",
    image_size: int = 32,
) -> Prepared:
    """Build the train and test arrays of dataset ``name`` and their meta.

    Writes nothing itself; only torchvision writes, when it downloads into ``raw_dir``.

    - ``digits``: the 1797 images split at random (``seed``) into ``test_size`` test images
      and the rest for training, with sklearn's ``target`` as labels; ``raw_dir`` is unused.
    - ``swissroll``: ``num_train_vectors`` training and ``test_size`` test points, two
      independent draws of ``make_swiss_roll(n, noise=noise)`` seeded from ``seed``, columns
      [0, 2] divided by 10; ``raw_dir`` is unused.
    - ``mnist``, ``fashion_mnist``, ``cifar10``: the official train and test splits read from
      ``raw_dir``, with the labels in their files. ``test_size=0`` keeps the whole official
      test split; ``0 < test_size <=`` its size keeps a random subset of that many test
      images and their labels (``seed``, original order), because the full bound costs T
      network calls per image.
    - ``folder``: the PNG and JPEG files in ``folder`` (flat, or class subfolders as labels),
      each resized and centre-cropped to ``image_size`` x ``image_size`` (ddpm.data.folder),
      split at random (stream "data_split" of ``seed``) into ``test_size`` test images and
      the rest for training, each split in sorted file order; ``raw_dir`` is unused.

    ``test_size="auto"`` (params' data.test_size default) is ``auto_test_size``: 300 (a torchvision
    test split of at most 300 images: all of it), or a tenth of a folder's images (1..300); the
    meta's ``test_size`` records the number held out.

    ``download=True`` lets torchvision fetch missing files; when they stay missing,
    DatasetNotFoundError says which files to place where, and DataError names a malformed
    one (for a folder: each unreadable, too small or refused image file; an empty or missing
    folder is DatasetNotFoundError). A ``test_size`` this dataset cannot honour, or an empty
    ``folder`` for dataset ``folder``, raises ConfigError (``data.test_size``, ``data.folder``);
    arguments no params file can produce (an unknown name, a negative seed) ValueError.
    """
    test_size = _checked_test_size(name, seed, test_size)
    start = time.perf_counter()
    if name == "swissroll":
        prepared = _swissroll_dataset(seed, test_size, num_train_vectors, noise)
    elif name == "folder":
        _check_int("image_size", image_size, minimum=1)
        prepared = _prepare_folder(folder, image_size, seed, test_size)
    else:
        prepared = _labelled_dataset(name, raw_dir, download, seed, test_size)
    logger.info(
        "prepared %s: %d train, %d test examples of shape %s in %.2f s",
        name, prepared.meta["train_size"], prepared.meta["test_size"], tuple(prepared.meta["shape"]),
        time.perf_counter() - start,
    )
    return prepared


def _checked_test_size(name: str, seed: int, test_size: int | str) -> int | str:
    """``test_size`` after the checks every dataset shares (its name, the seed, the test size),
    with ``auto`` resolved where it does not depend on the data (digits, swissroll)."""
    check_name(name)
    _check_int("seed", seed, minimum=0)
    if test_size != AUTO:
        _check_int("test_size", test_size, minimum=0, alternative=f"or {AUTO!r}")
    elif name in ("digits", "swissroll"):
        test_size = DEFAULT_TEST_SIZE
    return test_size


def _swissroll_dataset(seed: int, test_size: int, num_train_vectors: int, noise: float) -> Prepared:
    """The swissroll's arrays and meta, its own arguments checked first."""
    _check_int("num_train_vectors", num_train_vectors, minimum=1)
    if not (isinstance(noise, (int, float)) and not isinstance(noise, bool) and noise >= 0):
        raise ValueError(f"noise: bad value {noise!r}; accepted: a number >= 0")
    train, test, source = _prepare_swissroll(seed, test_size, num_train_vectors, float(noise))
    return Prepared(train=train, test=test, meta=_meta("swissroll", train, test, source, seed))


def _labelled_dataset(name: str, raw_dir: str | os.PathLike[str], download: bool, seed: int,
                      test_size: int | str) -> Prepared:
    """digits, or a torchvision dataset's official splits (the test split cut to ``test_size``),
    with their labels."""
    if name == "digits":
        train_split, test_split, source = _prepare_digits(seed, test_size)
    else:
        train_split, official_test, source = _read_torchvision(name, Path(raw_dir), download)
        test_split, test_source = _official_test_subset(name, official_test, test_size, seed)
        source = f"{source}; {test_source}"
    meta = _meta(name, train_split.images, test_split.images, source, seed)
    return Prepared(train=train_split.images, test=test_split.images, meta=meta,
                    train_labels=train_split.labels, test_labels=test_split.labels)


def _meta(name: str, train: np.ndarray, test: np.ndarray, source: str, seed: int) -> dict[str, Any]:
    info = DATASET_INFO[name]
    return {
        "dataset": name,
        "kind": info.kind,
        "shape": list(info.shape),
        "num_levels": info.num_levels,
        "num_classes": NUM_CLASSES.get(name),
        "train_size": int(train.shape[0]),
        "test_size": int(test.shape[0]),
        "source": source,
        "seed": int(seed),
    }


def _check_int(key: str, value: Any, *, minimum: int, alternative: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        accepted = " ".join(filter(None, [f"an integer >= {minimum}", alternative]))
        raise ValueError(f"{key}: bad value {value!r}; accepted: {accepted}")


def _test_size_error(test_size: int, dataset: str, accepted: str) -> ConfigError:
    return ConfigError(f"data.test_size={test_size} is not accepted for {dataset}; expected {accepted}")


# --- sklearn datasets -------------------------------------------------------------------


def _prepare_digits(seed: int, test_size: int) -> tuple[LabelledSplit, LabelledSplit, str]:
    # Imported here: sklearn.datasets is slow to import, and the stages that only load
    # prepared arrays (train, sample, evaluate) should not pay for it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images  # float64 [1797, 8, 8] holding the integers 0..16
    labels = digits.target.astype(np.int64)  # the digit 0..9 drawn in each image
    n = images.shape[0]
    if not 1 <= test_size <= n - 1:
        raise _test_size_error(test_size, "digits", f"1..{n - 1} of its {n} images (both splits non-empty)")
    levels = images.astype(np.uint8)[:, None]
    order = np.random.default_rng(seed).permutation(n)
    # Sorted indices keep each split in the bundled order, so an image is easy to trace back.
    test_idx, train_idx = np.sort(order[:test_size]), np.sort(order[test_size:])
    source = f"sklearn.datasets.load_digits: {n} images, random split of {test_size} test images"
    train, test = (LabelledSplit(levels[split_idx], labels[split_idx]) for split_idx in (train_idx, test_idx))
    return train, test, source


def _prepare_swissroll(
    seed: int, test_size: int, num_train_vectors: int, noise: float
) -> tuple[np.ndarray, np.ndarray, str]:
    from sklearn.datasets import make_swiss_roll

    if test_size < 1:
        raise _test_size_error(test_size, "swissroll", "an integer >= 1 (test points drawn)")
    # Two independent streams from one seed: train and test never share draws, and no seed's
    # test set is another seed's training set (as with seed and seed + 1).
    train_seed, test_seed = (int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(2))

    def draw(n: int, random_state: int) -> np.ndarray:
        # Columns [0, 2] / 10: the 2-D roll of the classic Swiss-roll diffusion tutorials.
        points, _ = make_swiss_roll(n, noise=noise, random_state=random_state)
        return (points[:, [0, 2]] / 10.0).astype(np.float32)

    source = (
        f"sklearn.datasets.make_swiss_roll(noise={noise}), columns [0, 2] / 10, "
        "independent train and test draws"
    )
    return draw(num_train_vectors, train_seed), draw(test_size, test_seed), source


def _official_test_subset(name: str, test: LabelledSplit, test_size: int | str, seed: int
                          ) -> tuple[LabelledSplit, str]:
    n = test.images.shape[0]
    if test_size == AUTO:
        test_size = auto_test_size(name, n)
    if test_size == 0:
        return test, f"official test split ({n} images)"
    if test_size > n:
        raise _test_size_error(test_size, name, f"0 (the whole official test split) or 1..{n}")
    keep = np.sort(np.random.default_rng(seed).choice(n, size=test_size, replace=False))
    source = f"random subset of {test_size} of the {n} official test images"
    return LabelledSplit(test.images[keep], test.labels[keep]), source


def _prepare_folder(folder: str | os.PathLike[str], image_size: int, seed: int, test_size: int | str
                    ) -> Prepared:
    if not str(folder).strip():
        raise ConfigError("data.folder='' is not accepted for dataset=folder; expected the path of a folder "
                          "of PNG or JPEG images (flat, or in class subfolders)")
    found = image_folder.find_images(folder)
    n = len(found.files)
    if n < 2:
        raise ConfigError(f"data.folder={str(folder)!r} holds {n} image; expected at least 2 (one to train on, "
                          "one held out for the bound)")
    rule = ""
    if test_size == AUTO:
        test_size = auto_test_size("folder", n)
        rule = f" (data.test_size=auto: a tenth of the images, 1..{DEFAULT_TEST_SIZE})"
    if not 1 <= test_size <= n - 1:
        accepted = f"1..{n - 1} of its {n} images (both splits non-empty), or auto: {auto_test_size('folder', n)}"
        raise _test_size_error(test_size, f"the folder {folder}", accepted)
    images = image_folder.read_images(found.files, image_size)
    order = np.random.default_rng(stream_seed(seed, "data_split")).permutation(n)
    # Sorted indices keep each split in sorted file order, so an image is easy to trace back.
    test_idx, train_idx = np.sort(order[:test_size]), np.sort(order[test_size:])
    classes = (f"{len(found.class_names)} class subfolders" if found.labels is not None
               else "no class subfolders (no labels)")
    source = (f"image folder {folder}: {n} images, {classes}, resized (shorter side, bicubic) and centre-cropped "
              f"to {image_size} x {image_size}; random split of {test_size} test images{rule}")
    train, test = images[train_idx], images[test_idx]
    meta = {**_meta("folder", train, test, source, seed), "shape": list(images.shape[1:]),
            "num_classes": len(found.class_names) or None, "class_names": list(found.class_names) or None}
    labels = (None, None) if found.labels is None else (found.labels[train_idx], found.labels[test_idx])
    return Prepared(train=train, test=test, meta=meta, train_labels=labels[0], test_labels=labels[1])


# --- torchvision datasets ---------------------------------------------------------------


def _read_torchvision(name: str, raw_dir: Path, download: bool) -> tuple[LabelledSplit, LabelledSplit, str]:
    if name == "cifar10":
        return cifar.read_cifar10(raw_dir, download)
    # Imported here for the same reason as sklearn: only the prepare stage needs torchvision.
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    return idx.read_idx_dataset(cls, raw_dir, download)
