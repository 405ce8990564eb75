"""Checkpoints: plain tensors and plain Python values only, written atomically and read
with ``torch.load(weights_only=True)``, so a checkpoint can never execute code.

A checkpoint holds the resolved config (params.yaml layout) and the data's meta, so the
sample and evaluate stages rebuild the model from the checkpoint alone.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ddpm.config import NETWORK, TRAIN_RESOLVED, key_role
from ddpm.errors import CheckpointError
from ddpm.io import atomic_path

SCHEMA_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, dicts, lists, numbers, strings) atomically."""
    state = {"schema_version": SCHEMA_VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) with a clear error when it is bad."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut-off one has no directory
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt (not a complete torch.save archive)"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds objects other than tensors and plain values and was "
            f"refused (loading it could run code): {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'})"
        ) from None
    if not isinstance(state, dict) or state.get("schema_version") != SCHEMA_VERSION:
        found = state.get("schema_version") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} has schema version {found!r}; this code reads version {SCHEMA_VERSION}"
        )
    return state


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The keys that fix the network or the process it was trained for (role ``network`` in
    ``ddpm.config.KEY_ROLES``; flattened, dotted) whose values differ, as 'key: saved -> current'."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        # The train stage derives these from the data when they are auto: auto in the current
        # params matches whatever the checkpoint derived.
        if key in TRAIN_RESOLVED and current.get(key) == "auto":
            continue
        if key_role(key) == NETWORK and saved.get(key, _default(key)) != current.get(key, _default(key)):
            diffs.append(f"{key}: checkpoint has {saved.get(key)!r}, params have {current.get(key)!r}")
    return diffs


def _default(key: str) -> Any:
    """The value of an identity key that a checkpoint from before it existed implies."""
    return "ddpm" if key == "family" else "auto" if key.startswith(("sde.", "ncsn.")) else None


def check_compatible(path: str | os.PathLike, saved_flat: dict[str, Any], current_flat: dict[str, Any]) -> None:
    """Raise ``CheckpointError`` naming every difference in T, schedule or architecture."""
    diffs = config_differences(saved_flat, current_flat)
    if diffs:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained with another config than the current params:\n  "
            + "\n  ".join(diffs)
        )
