"""The dataset registry: the names params.yaml accepts and what each example looks like.

A leaf with no third-party imports, so that ``ddpm.config`` can validate ``dataset``
without loading NumPy, torch or the readers.

``folder`` (the user's own images) is the one dataset whose examples' shape is not fixed:
it depends on ``data.image_size`` and on the images (1 channel when all are grey, else 3),
so its entry holds the largest case at the default size (3 channels, 32 x 32), and the
prepared ``meta.json`` holds the real shape.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

DATASETS: tuple[str, ...] = ("digits", "swissroll", "mnist", "fashion_mnist", "cifar10", "folder")


@dataclass(frozen=True)
class DatasetInfo:
    """What the model needs to know about a dataset's examples."""

    kind: Literal["image", "vector"]
    shape: tuple[int, ...]  # one example: (C, H, W) for images, (D,) for vectors
    num_levels: int | None  # K grey levels per pixel value; None for continuous vectors


DATASET_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("image", (1, 8, 8), 17),
    "swissroll": DatasetInfo("vector", (2,), None),
    "mnist": DatasetInfo("image", (1, 28, 28), 256),
    "fashion_mnist": DatasetInfo("image", (1, 28, 28), 256),
    "cifar10": DatasetInfo("image", (3, 32, 32), 256),
    "folder": DatasetInfo("image", (3, 32, 32), 256),  # shape: 3 channels at data.image_size's default
}


def dataset_info(name: str) -> DatasetInfo:
    """Return the registry entry for ``name``; ValueError for an unknown name."""
    check_name(name)
    return DATASET_INFO[name]


def check_name(name: str) -> None:
    """ValueError naming the closest registered name when ``name`` is not one."""
    if name in DATASETS:
        return
    close = difflib.get_close_matches(str(name), DATASETS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"dataset: unknown value {name!r}{hint}; accepted values: {', '.join(DATASETS)}")
