"""User-facing errors.

Anything a user can cause (bad data, a typo in a config, a wrong array shape, a checkpoint of
another model) raises `CnnrnnError` with a one-line message that says what is wrong and how to
fix it. The CLI prints that line and exits with status 2; it never shows a traceback for these.
"""


class CnnrnnError(Exception):
    """A mistake the user can fix; the message is one line: what is wrong, and what to do."""


class DataError(CnnrnnError):
    """Dataset files are missing, truncated, corrupt or of the wrong shape."""


class ConfigError(CnnrnnError):
    """A config file or CLI option is unknown, misspelt or out of range."""


class CheckpointError(CnnrnnError):
    """A checkpoint is missing, unreadable or belongs to another model or task."""
