"""Errors a user can cause, each raised with one message naming the problem and what is
accepted. Kept in one small leaf module so the stage entry points can catch them without
importing (and so depending on) the code that raises them.

Every such error derives from ``UserError``: the stage edge (``ddpm.pipeline.stage``) prints it as one
line without a traceback. Anything else (a ``ValueError`` from the math, a bug) keeps its
traceback, so a broken formula never masquerades as a bad parameter. The classes also keep
the builtin base they had (``ValueError``, ``RuntimeError``), so notebook code that catches
those still works.
"""


class UserError(Exception):
    """A mistake the user can fix: params, data files, a checkpoint, the environment."""


class ConfigError(UserError, ValueError):
    """A params.yaml key has an unknown name, a wrong type or a bad value, or a value that
    this machine or this data cannot honour (a missing CUDA device, a batch too large)."""


class DataError(UserError, ValueError):
    """Dataset or report files (raw, prepared, or the CSVs the plot stage reads) are malformed,
    truncated or inconsistent."""


class DatasetNotFoundError(UserError, RuntimeError):
    """A dataset's raw or prepared files are missing and could not be downloaded or made."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or training state is missing, unreadable, or from an incompatible config
    or device."""


class TrackingError(UserError, RuntimeError):
    """The MLflow tracking store cannot be reached or used."""


class TrainingDiverged(UserError, RuntimeError):
    """The loss or the weights became NaN or infinite."""


class EvaluationError(UserError, ValueError):
    """A score cannot be reported: no examples, too few samples for the metric's settings, or
    non-finite values (the bound, features)."""
