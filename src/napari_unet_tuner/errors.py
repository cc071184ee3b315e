"""Errors that tell the user what to fix.

Each derives from a built-in exception type so callers that catch
``ValueError`` or ``OSError`` keep working.
"""


class UnetTunerError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(UnetTunerError, ValueError):
    """A configuration (or the config stored in a checkpoint) is invalid."""


class CheckpointError(UnetTunerError, ValueError):
    """A checkpoint file cannot be used; the message says why and what to do."""


class InputError(UnetTunerError, ValueError):
    """An image or annotation cannot be processed as given."""


class CancelledError(UnetTunerError):
    """A long run was stopped by its caller."""


# Errors a user can fix, reported in one line by the command line: this
# package's own, files that cannot be read or written, and values refused (a
# truncated TIFF is a ValueError to tifffile). Anything else is a bug and
# keeps its traceback.
EXPECTED_ERRORS = (UnetTunerError, OSError, ValueError)
