"""Presence of raw dataset files, and downloading them through torchvision when allowed."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from ddpm.errors import DatasetNotFoundError

# torchvision downloads without a socket timeout; on a firewalled machine every attempt
# would then hang for the OS connect timeout (minutes, several URLs in turn).
DOWNLOAD_TIMEOUT_S = 30.0


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
