"""User-facing errors.

Anything a user can cause (bad data, a typo in a config, a wrong array shape, a checkpoint of
another model) raises `CnnrnnError` with a one-line message that says what is wrong and how to
fix it. The CLI prints that line and exits with status 2; it never shows a traceback for these.
"""

from __future__ import annotations


class CnnrnnError(Exception):
    """A mistake the user can fix; the message is one line: what is wrong, and what to do.

    `every_rank`: under torchrun, every rank raised this same error (the ranks agreed on it),
    so rank 0 alone needs to print it."""

    every_rank: bool = False

    @classmethod
    def on_every_rank(cls, message: str) -> CnnrnnError:
        error = cls(message)
        error.every_rank = True
        return error


class DataError(CnnrnnError):
    """Dataset files are missing, truncated, corrupt or of the wrong shape."""


class ConfigError(CnnrnnError):
    """A config file or CLI option is unknown, misspelt or out of range."""


class CheckpointError(CnnrnnError):
    """A checkpoint is missing, unreadable or belongs to another model or task."""


class DiskFullError(CnnrnnError):
    """No space was left on the device while a file was written (the file was not written)."""
