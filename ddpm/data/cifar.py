"""CIFAR-10: the pickled Python batches, scanned here without executing them and read by
torchvision."""

from __future__ import annotations

import functools
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np

from ddpm.data.download import LabelledSplit, class_indices, ensure_files
from ddpm.errors import DataError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
NUM_CLASSES = 10
# The only globals that the official CIFAR-10 pickles (Python 2 cPickle, protocol 2) import;
# NumPy 2 moved numpy.core to numpy._core, so copies re-pickled since may name that one.
_PICKLE_GLOBALS = frozenset(
    {"numpy.core.multiarray _reconstruct", "numpy._core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
)
# Opcodes that make pickle.load import something: by name (GLOBAL, INST), by names taken
# from the stack (STACK_GLOBAL, protocol 4+) or through the copyreg extension registry.
_PICKLE_IMPORT_OPCODES = frozenset({"GLOBAL", "INST", "STACK_GLOBAL", "EXT1", "EXT2", "EXT4"})


def read_cifar10(raw_dir: Path, download: bool) -> tuple[LabelledSplit, LabelledSplit, str]:
    """The official train and test splits (images uint8 [N, 3, 32, 32], labels) and a source line.

    The batches live in ``raw_dir/cifar-10-batches-py``. DatasetNotFoundError when they are
    missing, DataError when one is truncated, imports other code, holds other arrays or labels
    outside 0..9.
    """
    cls = _cifar10_class()
    folder = raw_dir / FOLDER
    files = (*TRAIN_FILES, TEST_FILE, META_FILE)
    instructions = (
        f"They come from {cls.url}: unpack it into {raw_dir} (it holds the folder {FOLDER}), "
        f"or put the archive itself in {raw_dir}: torchvision checks its md5 and unpacks it on the "
        "next run with download enabled."
    )
    fetch = functools.partial(cls, os.fspath(raw_dir), train=True, download=True)
    ensure_files("CIFAR-10", folder, files, download, fetch, instructions)
    for file in files:
        scan_cifar10_pickle(folder / file)
    splits = [_read_split(cls, raw_dir, train, names)
              for train, names in ((True, TRAIN_FILES), (False, (TEST_FILE,)))]
    source = f"torchvision.datasets.CIFAR10: official train split ({len(splits[0].images)} images)"
    return splits[0], splits[1], source


def _read_split(cls: type, raw_dir: Path, train: bool, names: tuple[str, ...]) -> LabelledSplit:
    folder = raw_dir / FOLDER
    try:
        dataset = cls(os.fspath(raw_dir), train=train, download=False)
    except (EOFError, pickle.UnpicklingError, AttributeError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise DataError(
            f"{folder}: torchvision could not read {', '.join(names)} or {META_FILE} "
            f"({type(exc).__name__}: {exc}); each batch must pickle a dict with b'data' (uint8 [N, 3072]) "
            f"and b'labels' (N ints), and {META_FILE} one with b'label_names'"
        ) from None
    data = dataset.data  # [N, 32, 32, 3]: torchvision reshapes each row to [3, 32, 32], then to HWC
    if data.dtype != np.uint8:
        raise DataError(f"{folder}: the b'data' arrays of {', '.join(names)} must be uint8, found {data.dtype}")
    if len(dataset.targets) != len(data):
        raise DataError(
            f"{folder}: {', '.join(names)} hold {len(dataset.targets)} labels for {len(data)} images of "
            f"3 x 32 x 32 bytes; each b'data' row must hold 3072 bytes (1024 red, 1024 green, 1024 blue)"
        )
    labels = class_indices(dataset.targets, NUM_CLASSES, f"{folder}: b'labels' of {', '.join(names)}")
    return LabelledSplit(np.ascontiguousarray(data.transpose(0, 3, 1, 2)), labels)  # back to [N, 3, 32, 32]


@functools.cache
def _cifar10_class() -> type:
    """torchvision's CIFAR10 with the md5 checks of the unpacked files reduced to existence.

    torchvision compares every batch file with the md5 of the official release, so it
    refuses any other file in the same format (the small ones tests write, a copy that was
    re-pickled). We check presence ourselves, scan each pickle and check the array shapes
    instead; the downloaded archive itself is still md5-checked by torchvision. torchvision
    treats an md5 of None as "the file exists", for the batches and batches.meta alike.
    """
    # Imported here: torchvision costs a noticeable import time that only the prepare stage needs.
    from torchvision.datasets import CIFAR10

    class CIFAR10PresenceChecked(CIFAR10):
        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return CIFAR10PresenceChecked


def scan_cifar10_pickle(path: Path) -> None:
    """Refuse a batch file that is truncated or would import more than NumPy's array code.

    torchvision reads the batches with pickle.load, which calls whatever the pickle names.
    pickletools parses the opcodes without executing any, so this finds truncated files by
    name and limits what torchvision's load can run to the official files' imports.
    """
    try:
        with open(path, "rb") as f:
            imports = [(op.name, arg) for op, arg, _ in pickletools.genops(f) if op.name in _PICKLE_IMPORT_OPCODES]
    except ValueError as exc:
        raise DataError(f"{path}: truncated or not a pickle ({exc})") from None
    for opcode, arg in imports:
        if opcode in ("GLOBAL", "INST"):
            if arg not in _PICKLE_GLOBALS:
                raise DataError(f"{path}: the pickle imports {arg!r}, which CIFAR-10 batch files never do")
        else:
            raise DataError(
                f"{path}: the pickle uses opcode {opcode}, which the official CIFAR-10 batch files "
                "(protocol 2) never do; use the files from the official archive"
            )
