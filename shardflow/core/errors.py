"""Errors a user can act on. Each message names the file, column or config key, and the fix."""


class ShardflowError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class InputError(ShardflowError, ValueError):
    """The input data (a file, a column, its values) cannot be used as configured."""
