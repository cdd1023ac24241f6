"""Full disks in a run directory (checkpoints, metrics.csv, log.jsonl): recognised and reported here, once.

A write that finds the disk full raises cellio's DiskFullError naming the file, what it needed and what was free;
what was written before stays whole, so the same command rerun after freeing space resumes.
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

from cellio.errors import DiskFullError

__all__ = ["free_bytes", "is_disk_full", "require_space"]

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# torch.save given a path writes through C++ and reports a short write in its own words, without the OS error:
# "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598" (torch 2.14.1, on a full tmpfs and on
# /dev/full), "PytorchStreamWriter failed writing file" in older versions. The trainer hands it a Python file
# instead, whose write raises the OSError itself; these texts are the fallback.
_TORCH_FULL = ("unexpected pos", "PytorchStreamWriter failed writing", "No space left on device",
               "Disk quota exceeded")


def free_bytes(directory: str | Path) -> int | None:
    """Free bytes where `directory` lives (None when the file system does not say)."""
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT as an OSError (or behind the error raised), or torch.save's RuntimeError for a write that came
    up short."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _NO_SPACE:
            return True
        if isinstance(seen, RuntimeError) and any(text in str(seen) for text in _TORCH_FULL):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def require_space(path: str | Path, needed: int, *, what: str, hint: str) -> None:
    """DiskFullError before the first byte when `needed` bytes do not fit beside `path`."""
    free = free_bytes(Path(path).parent)
    if free is not None and free < needed:
        raise DiskFullError(str(path), needed, free, what=what, hint=hint)
