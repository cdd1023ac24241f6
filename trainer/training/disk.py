"""How the trainer writes its files: whole or not at all (`replaced_atomically`: a temporary file beside, then one
os.replace), and full disks (checkpoints, metrics.csv, log.jsonl) recognised and reported here, once.

    with replaced_atomically(path, suffix=".npz") as tmp:    # np.savez(tmp, ...): `path` appears only when whole
        ...

A write that finds the disk full raises cellio's DiskFullError naming the file, what it needed and what was free;
what was written before stays whole, so the same command rerun after freeing space resumes.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from cellio.errors import DiskFullError

__all__ = ["temporary_beside", "replaced_atomically", "free_bytes", "is_disk_full", "require_space"]

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# torch.save given a path writes through C++ and reports a short write in its own words, without the OS error:
# "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598" (torch 2.14.1, on a full tmpfs and on
# /dev/full), "PytorchStreamWriter failed writing file" in older versions. The trainer hands it a Python file
# instead, whose write raises the OSError itself; these texts are the fallback.
_TORCH_FULL = ("unexpected pos", "PytorchStreamWriter failed writing", "No space left on device",
               "Disk quota exceeded")


def temporary_beside(path: str | Path, suffix: str = "") -> Path:
    """Where `path` is written before it replaces itself: `.NAME.<pid>.tmp` + `suffix` in the same directory (so
    os.replace is one rename; a killed writer's leftover names its process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")


@contextlib.contextmanager
def replaced_atomically(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path` to write (`suffix`: an ending the writer insists on, np.savez's .npz); when
    the block ends without an error it replaces `path`, so a reader sees the old file or the new one, never a torn
    one. The temporary file is gone afterwards either way."""
    path = Path(path)
    tmp = temporary_beside(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
