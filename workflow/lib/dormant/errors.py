"""Exceptions with messages meant for the user: each names the offending key or file."""


class DormantError(Exception):
    """Base class of the errors this package raises on bad input."""


class ConfigError(DormantError):
    """params.yaml (or a preset) is malformed; the message names the key."""


class DataError(DormantError):
    """A dataset file or folder is missing or corrupt; the message names the file."""


class CheckpointError(DormantError):
    """A checkpoint or artifact is missing, corrupt or does not fit; the message names the file."""


class NonFiniteError(DormantError):
    """Training or a defense produced NaN or infinite losses or weights; nothing was written."""
