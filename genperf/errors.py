class GenperfError(Exception):
    """An error the user can fix (bad data, bad options); the CLI prints it as one line."""


class DataError(GenperfError):
    pass


class LostPeer(GenperfError):
    """A collective failed because another rank is gone or stopped answering (genperf.distributed.LOST_PEER_EXIT)."""


class BackendError(GenperfError, RuntimeError):
    """A fused-op backend was asked for where it cannot run."""


def os_error_line(e: OSError) -> str:
    """An OSError as the one line a user reads: what failed, on which path."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{e.strerror or e}: {where}" if where else str(e.strerror or e)
