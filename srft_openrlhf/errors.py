"""Errors caused by the user's input (config, data, paths).

The CLI prints these as one line (``srft train: error: ...``) instead of a traceback, so
every message must name the culprit: file, row, field or config key, and what to do.
"""


class UserError(ValueError):
    """Base class for input problems the user can fix."""


class ConfigError(UserError):
    """A bad or unknown config key / value."""


class CheckpointError(UserError):
    """A missing, incomplete or mismatched checkpoint (message names the folder)."""


class DataError(UserError):
    """A malformed dataset file or row (message names file, row and field)."""
