"""Datasets: a registry of names, preparation into arrays plus ``meta.json``, validated
loading, and the K-level scaling between stored grey levels and model space.

One concern per module:

- ``registry``: the dataset names and what their examples look like (no third-party imports);
- ``scaling``: grey levels ``v in {0..K-1}`` <-> model space ``x = 2 v / (K - 1) - 1``;
- ``prepared``: train.npy, test.npy, the class labels of labelled datasets and meta.json,
  written atomically and checked on load;
- ``prepare``: building the arrays and labels of each dataset (sklearn, or torchvision's files);
- ``folder``: the user's own PNG and JPEG files, resized and centre-cropped;
- ``idx``, ``cifar``: checking MNIST's IDX files and CIFAR-10's pickles before torchvision
  reads them; ``download``: presence of raw files, torchvision downloads, label checks.

The public names below are imported on first use, so that ``ddpm.config`` (which needs only
``DATASETS``) and each stage load, and so depend on, only the modules they use.
"""

from __future__ import annotations

from ddpm._lazy import lazy_exports
from ddpm.errors import DataError, DatasetNotFoundError

_EXPORTS = {
    "DATASETS": "registry",
    "DATASET_INFO": "registry",
    "DatasetInfo": "registry",
    "dataset_info": "registry",
    "from_model_space": "scaling",
    "to_model_space": "scaling",
    "META_FILE": "prepared",
    "TEST_FILE": "prepared",
    "TEST_LABELS_FILE": "prepared",
    "TRAIN_FILE": "prepared",
    "TRAIN_LABELS_FILE": "prepared",
    "Prepared": "prepared",
    "load_prepared": "prepared",
    "write_prepared": "prepared",
    "prepare_dataset": "prepare",
}

__all__ = ["DataError", "DatasetNotFoundError", *_EXPORTS]

# Imported on first use, so a stage loads, and DVC makes it depend on, only what it runs.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
