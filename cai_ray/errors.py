"""Errors that the command line turns into exit code 2 (bad input) with a one-line message."""


class InputError(ValueError):
    """Bad input or configuration: the message names the file, field or line and the fix."""


class ConfigError(InputError):
    """A job file or an override failed validation."""
