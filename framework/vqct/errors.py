"""User-facing errors: one line on stderr, exit code 2, never a traceback."""


class UserError(Exception):
    """Bad input from the user (recipe, override, path, address).

    The message must name what is wrong and how to fix it; the CLI prints it as
    one line and exits with code 2.
    """

    exit_code = 2


class TrainingFailed(RuntimeError):
    """Training started but did not finish; the message carries the worker's error."""

    exit_code = 1


class RunStopped(RuntimeError):
    """Training cannot go on, and restarting the workers would only repeat it (no usable
    data, diverged numerics): every rank stops together and the run fails once, unretried."""
