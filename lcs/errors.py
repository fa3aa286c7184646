"""The one root for expected, user-facing failures.

Anything raised as an `LcsError` is shown by the CLI as one line and a non-zero exit code;
anything else is a bug and keeps its traceback.
"""


class LcsError(Exception):
    """A failure the user can fix (bad input, missing tool, corrupt file)."""

    exit_code = 2


class DataError(LcsError):
    """A data set that cannot be read, or does not fit the model."""


class ConfigError(LcsError):
    """An option or config value outside what lcs supports."""


class CheckpointError(LcsError):
    """A checkpoint that is corrupt, foreign, or does not match its config."""
