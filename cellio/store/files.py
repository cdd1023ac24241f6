"""Where a store's bytes go: local paths or fsspec URLs (`is_url`, `get_fs`), and `FileTarget`, the one place a
store file is written (atomic temp + rename on local disks, one put per object on URLs; ENOSPC becomes
DiskFullError naming the file)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from typing import Any

import numpy as np

from ..errors import DiskFullError
from .format import TMP_DIR
from .remote import with_retries
from .tables import small_array_files

__all__ = ["is_url", "get_fs", "free_bytes", "FileTarget"]


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for fsspec URLs other than plain local files."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def get_fs(path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, root path without protocol) for a local path or URL."""
    import fsspec.core

    s = str(path)
    if not is_url(s):
        s = os.path.abspath(s[7:] if s.startswith("file://") else s)
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), s
    fs, root = fsspec.core.url_to_fs(s, **(storage_options or {}))
    return fs, root.rstrip("/")


def free_bytes(path: str) -> int | None:
    """Free bytes on the file system holding local `path` (or its nearest existing parent); None if unknown."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return None


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class FileTarget:
    """Writes into a store root: atomic temp+rename on local disks, whole-object puts on fsspec URLs.

    A write that runs out of space (ENOSPC, EDQUOT) leaves no partial file behind and raises DiskFullError naming
    the file; what was written before stays valid, so the interrupted job resumes.
    """

    def __init__(self, path: str, storage_options: dict[str, Any] | None):
        self.path = path
        self.storage_options = storage_options or {}
        self.fs, self.root = get_fs(path, storage_options)
        self.local = not is_url(path)

    def key(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.key(rel))

    def free_bytes(self) -> int | None:
        """Free space where the store lives (local disks; None for URLs)."""
        return free_bytes(self.root) if self.local else None

    def write(self, rel: str, data: bytes | memoryview) -> None:
        full = self.key(rel)
        tmp = None
        try:
            if self.local:
                os.makedirs(os.path.dirname(full), exist_ok=True)
                tmpdir = self.key(TMP_DIR)
                os.makedirs(tmpdir, exist_ok=True)
                tmp = os.path.join(tmpdir, uuid.uuid4().hex)
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, full)  # atomic: readers and reruns see the old file or the whole new one
            else:  # one put; transient failures retried, then RemoteStoreError naming the object
                blob = bytes(data)
                with_retries(lambda: self.fs.pipe_file(full, blob), self.fs.unstrip_protocol(full), what="put")
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                raise
            if tmp is not None:
                try:
                    os.remove(tmp)
                except OSError:
                    pass
            raise DiskFullError(full, len(memoryview(data).cast("B")), self.free_bytes(),
                                what=f"writing this file ({exc.strerror})") from None

    def write_json(self, rel: str, obj: Any) -> None:
        self.write(rel, json.dumps(obj, indent=2).encode())

    def write_small_array(self, rel: str, data: np.ndarray, checksum: bool = True) -> None:
        """A whole one-chunk array (see `small_array_files`) under `rel`."""
        for key, blob in small_array_files(data, checksum=checksum).items():
            self.write(f"{rel}/{key}", blob)

    def files(self, skip: tuple[str, ...] = ()) -> list[str]:
        """Every file under the root, relative to it ('/'-separated), sorted; [] when the root does not exist.

        skip: relative directories not to descend into (images/c: only chunk files, possibly 100,000s of them).
        """
        out: list[str] = []
        if self.local:
            for dirpath, dirs, names in os.walk(self.root):
                rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
                rel = "" if rel == "." else rel + "/"
                dirs[:] = [d for d in dirs if rel + d not in skip]
                out += [rel + n for n in names]
            return sorted(out)
        prefix = self.root.rstrip("/") + "/"
        try:
            found = self.fs.find(self.root)
        except FileNotFoundError:
            return []
        for p in found:
            rel = p[len(prefix):] if p.startswith(prefix) else None
            if rel and not any(rel.startswith(d + "/") for d in skip):
                out.append(rel)
        return sorted(out)

    def remove(self, rel: str, recursive: bool = False) -> None:
        """Delete one of cellio's own files or directories (never called on anything else)."""
        full = self.key(rel)
        if self.local:
            if os.path.isdir(full):
                shutil.rmtree(full)
            elif os.path.exists(full):
                os.remove(full)
        elif self.fs.exists(full):
            self.fs.rm(full, recursive=recursive)
