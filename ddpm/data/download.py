"""What the torchvision readers share: presence of raw dataset files, downloading them
through torchvision when allowed, and the check of the class labels read from them."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ddpm.errors import DataError, DatasetNotFoundError

# torchvision downloads without a socket timeout; on a firewalled machine every attempt
# would then hang for the OS connect timeout (minutes, several URLs in turn).
DOWNLOAD_TIMEOUT_S = 30.0


class LabelledSplit(NamedTuple):
    """One official split as a reader returns it: the images and their class labels, row by row."""

    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray  # int64 [N] class indices


def ensure_files(
    label: str,
    folder: Path,
    files: tuple[str, ...],
    download: bool,
    fetch: Callable[[], object],
    instructions: str,
) -> None:
    """Make sure ``folder`` holds ``files``, downloading through ``fetch`` if allowed.

    DatasetNotFoundError lists every file (present or not), why they are missing, and
    ``instructions`` on where to get them.
    """
    missing = [name for name in files if not (folder / name).is_file()]
    if not missing:
        return
    if not download:
        reason = "download is disabled (download=False)"
    else:
        try:
            with default_socket_timeout(DOWNLOAD_TIMEOUT_S):
                fetch()
            reason = "the download finished without them"
        # Broad on purpose: torchvision wraps network errors in RuntimeError, URLError or
        # OSError depending on the dataset, and fetch() also reads the split it downloaded.
        # What matters is whether the files are there now; if they are, the checked read
        # that follows reports any problem with them precisely.
        except Exception as exc:
            reason = f"the download failed: {' '.join(str(exc).split()) or type(exc).__name__}"
        missing = [name for name in files if not (folder / name).is_file()]
        if not missing:
            return
    listing = "\n".join(f"  {folder / name}{'' if name in missing else '  (present)'}" for name in files)
    raise DatasetNotFoundError(
        f"{label} not found: {len(missing)} of {len(files)} files missing in {folder} "
        f"({', '.join(missing)}), and {reason}.\nPlace these files there:\n{listing}\n{instructions}"
    )


@contextlib.contextmanager
def default_socket_timeout(seconds: float) -> Iterator[None]:
    """Give sockets without a timeout this one while the block runs (process-wide)."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def class_indices(values: object, num_classes: int, where: str) -> np.ndarray:
    """The labels read from raw files as int64 class indices, checked to lie in 0..num_classes-1.

    DataError naming ``where`` (the files they came from) when they are not integers or
    fall outside that range.
    """
    labels = np.asarray(values)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels must be a list of integer class indices, found {labels.dtype} "
                        f"values of shape {list(labels.shape)}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: labels must be class indices 0..{num_classes - 1}, "
                        f"found values from {labels.min()} to {labels.max()}")
    return labels.astype(np.int64)
