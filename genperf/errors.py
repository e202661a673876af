class GenperfError(Exception):
    """An error the user can fix (bad data, bad options); the CLI prints it as one line."""


class DataError(GenperfError):
    pass


class BackendError(GenperfError, RuntimeError):
    """A fused-op backend was asked for where it cannot run."""
