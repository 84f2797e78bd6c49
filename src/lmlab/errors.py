"""The error a user can fix: bad config values, unusable files, unsafe or broken checkpoints.

The command-line entry points print an ``InputError`` as one line (no traceback; set
``HYDRA_FULL_ERROR=1`` for it) and exit with status 2. Anything else is a bug and keeps its traceback.
It subclasses ``ValueError`` so plain-PyTorch callers can keep catching ``ValueError``.
"""


class InputError(ValueError):
    """A mistake in the user's input; the message names the field (or file), the value and what is allowed."""


class CheckpointError(InputError):
    """A checkpoint that cannot be loaded safely: not a checkpoint, truncated, corrupt, or needing pickled code."""
