"""Exceptions that tfpurify raises on bad input.

Every subclass of `TfpurifyError` is a user-facing error: the CLI prints its message as one line
on stderr and exits with status 1. Anything else escaping the library is a bug.
"""

__all__ = [
    "TfpurifyError",
    "DatasetUnavailableError",
    "DataFormatError",
    "RunFolderError",
    "AttackConfigError",
    "InputValidationError",
    "PluginError",
]


class TfpurifyError(Exception):
    """Base class of the errors a user can fix (bad input, missing files)."""


class DatasetUnavailableError(TfpurifyError):
    """The data set is neither on disk nor downloadable; the message says where to put it."""


class DataFormatError(TfpurifyError, ValueError):
    """A data file exists but is truncated, corrupt or of the wrong format."""


class RunFolderError(TfpurifyError):
    """A run folder is missing, incomplete or holds an unknown model."""


class AttackConfigError(TfpurifyError, ValueError):
    """An attack was asked for by an unknown name or with invalid parameters."""


class InputValidationError(TfpurifyError, ValueError):
    """Images or labels have the wrong shape, dtype or values (NaN, Inf, out of range)."""


class PluginError(TfpurifyError):
    """An installed plug-in (entry-point groups `tfpurify.defenses`, `tfpurify.attacks`) fails to load."""
