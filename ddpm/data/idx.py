"""MNIST and Fashion-MNIST: LeCun's IDX files, checked here and read by torchvision."""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path

import numpy as np

from ddpm.data.download import LabelledSplit, class_indices, ensure_files
from ddpm.errors import DataError

IMAGE_FILES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
LABEL_FILES = ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")
NUM_CLASSES = 10  # MNIST's digits 0..9; Fashion-MNIST's ten kinds of clothing
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx_dataset(cls: type, raw_dir: Path, download: bool) -> tuple[LabelledSplit, LabelledSplit, str]:
    """The official train and test splits (images uint8 [N, 1, 28, 28], labels) and a source line.

    ``cls`` is torchvision's dataset class; its files live in ``raw_dir/<ClassName>/raw``.
    DatasetNotFoundError when they are missing, DataError when one is malformed or a label
    lies outside 0..9.
    """
    folder = raw_dir / cls.__name__ / "raw"
    files = (IMAGE_FILES[0], LABEL_FILES[0], IMAGE_FILES[1], LABEL_FILES[1])
    archives = ", ".join(f"{cls.mirrors[0]}{name}" for name, _ in cls.resources)
    mirrors = f" (mirrors: {', '.join(cls.mirrors[1:])})" if len(cls.mirrors) > 1 else ""
    instructions = (
        f"They are the gunzipped archives {archives}{mirrors}. Alternatively put the .gz archives "
        f"themselves in {folder}: torchvision checks their md5 and unpacks them on the next run "
        "with download enabled."
    )
    fetch = functools.partial(cls, os.fspath(raw_dir), train=True, download=True)
    ensure_files(cls.__name__, folder, files, download, fetch, instructions)
    # torchvision's reader checks the header only with `assert`, which `python -O` strips,
    # and reports a short file as a failed view; check each file here to name the problem.
    for images_file, labels_file in zip(IMAGE_FILES, LABEL_FILES, strict=True):
        n_images = check_idx_file(folder / images_file, (28, 28))
        n_labels = check_idx_file(folder / labels_file, ())
        if n_images != n_labels:
            raise DataError(
                f"{folder / labels_file}: holds {n_labels} labels, but {images_file} holds {n_images} images"
            )
    splits = []
    for train, labels_file in zip((True, False), LABEL_FILES, strict=True):
        try:
            dataset = cls(os.fspath(raw_dir), train=train, download=False)
        except (AssertionError, RuntimeError, TypeError, ValueError) as exc:
            raise DataError(
                f"{folder}: torchvision could not read the IDX files: {type(exc).__name__}: {exc}"
            ) from None
        images = dataset.data.numpy()[:, None]  # uint8 [N, 28, 28] -> [N, 1, 28, 28]
        labels = class_indices(dataset.targets.numpy(), NUM_CLASSES, str(folder / labels_file))
        splits.append(LabelledSplit(images, labels))
    source = f"torchvision.datasets.{cls.__name__}: official train split ({len(splits[0].images)} images)"
    return splits[0], splits[1], source


def check_idx_file(path: Path, item_shape: tuple[int, ...]) -> int:
    """Check an IDX file of unsigned bytes (LeCun's MNIST format) and return its length N.

    Layout: a big-endian magic number 0x000008DD (0x08: unsigned bytes, DD: number of
    dimensions), DD big-endian uint32 sizes, then prod(sizes) bytes. DataError names
    what is wrong.
    """
    ndim = 1 + len(item_shape)
    expected_magic = 0x0800 + ndim
    header_size = 4 * (1 + ndim)
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(header_size)
    if header.startswith(_GZIP_MAGIC):
        raise DataError(f"{path}: is gzip-compressed; unpack it (gunzip) so the file holds the raw IDX data")
    if len(header) < 4:
        raise DataError(f"{path}: truncated: {file_size} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">I", header[:4])
    if magic != expected_magic:
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x}; expected 0x{expected_magic:08x} "
            f"(IDX file of unsigned bytes with {ndim} dimension{'s' if ndim > 1 else ''})"
        )
    if len(header) < header_size:
        raise DataError(f"{path}: truncated: {file_size} bytes, shorter than its {header_size}-byte IDX header")
    dims = struct.unpack(f">{ndim}I", header[4:])
    if dims[1:] != item_shape:
        raise DataError(f"{path}: holds items of shape {list(dims[1:])}, expected {list(item_shape)}")
    payload = int(np.prod(dims))
    if file_size != header_size + payload:
        problem = "truncated" if file_size < header_size + payload else "has trailing bytes"
        raise DataError(
            f"{path}: {problem}: the header promises {' x '.join(map(str, dims))} = {payload} bytes of data, "
            f"the file holds {file_size - header_size} after its {header_size}-byte header"
        )
    return dims[0]
