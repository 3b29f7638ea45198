"""The error of bad input to a command: the CLI reports it in one line and exits with code 2."""


class UsageError(ValueError):
    """A problem with the command line or its input files: reported in one line, exit code 2."""
