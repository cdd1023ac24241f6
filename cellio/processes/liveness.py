"""Whether a process is alive: the one liveness check of cellio and its users (the store's writer lock decides
whether a lock file is stale with it; the trainer whether a checkpoint's temporary file belongs to a live writer)."""
from __future__ import annotations

import os

__all__ = ["pid_alive"]


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host and has not exited: a zombie (exited, not yet reaped by its
    parent) counts as dead, since it holds no locks and writes no files. `cellio.pid_alive`."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a zombie (exited, not yet reaped) holds no locks
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
