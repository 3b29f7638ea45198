"""The error of bad input to a command: the CLI reports it in one line and exits with code 2.

Library code raises it where the fault is the input's (a flag, a corrupt record file, another
run's manifest in the output directory, data that does not fit the model), so that a command's
run catches exactly these: any other error inside a run is a bug and keeps its type and traceback.
"""


class UsageError(ValueError):
    """A problem with the command line or its input files: reported in one line, exit code 2."""
