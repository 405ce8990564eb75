"""Errors a user can cause, each raised with one message naming the problem and what is
accepted. Kept in one small module so the stage entry points can catch them without
importing (and so depending on) the code that raises them."""


class ConfigError(ValueError):
    """A params.yaml key has an unknown name, a wrong type or a bad value."""


class DatasetNotFoundError(RuntimeError):
    """A dataset's raw files are missing from ``raw_dir`` and could not be downloaded."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or from an incompatible config."""


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be reached or used."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""
