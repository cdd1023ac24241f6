"""One exception hierarchy for cellio.

Every message says what was expected, what was found, and where (file, row, parameter), so a user can fix the
input without reading our code.
"""
from __future__ import annotations

from typing import Any

__all__ = [
    "CellioError",
    "MetadataError",
    "LayoutError",
    "ImageError",
    "StoreError",
    "StoreIncompleteError",
    "StoreDamagedError",
    "ChecksumError",
    "StoreLockedError",
    "DiskFullError",
    "RemoteStoreError",
    "PipelineConfigError",
    "MissingDependencyError",
    "CredentialsError",
    "DownloadError",
    "ConfigError",
    "MainModuleError",
]


class CellioError(Exception):
    """Base class of every error cellio raises on purpose."""


class MetadataError(CellioError, ValueError):
    """An RxRx1 CSV is missing, malformed or inconsistent (message names file, row, column and value)."""


class LayoutError(CellioError, ValueError):
    """A data set layout (cellio.DatasetLayout) is invalid, or a store's recorded layout does not parse: the message
    names the field and says what was expected and what was found."""


class ImageError(CellioError, ValueError):
    """A site image is missing, unreadable, truncated, or has the wrong size, bit depth or colour mode."""


class StoreError(CellioError):
    """A cellio Zarr store is missing, of an unknown format version, or inconsistent."""


class StoreIncompleteError(StoreError):
    """The store's ingest did not finish; rerun `cellio ingest` with the same arguments to complete it."""


def _rebuild(cls: type, message: str, state: dict[str, Any]) -> BaseException:
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(state)
    return exc


class _Picklable:
    """Errors with keyword attributes pickle as (message, attributes): they cross worker-process boundaries
    (ingest's process pool, Dask, DALI's external_source workers) intact."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), str(self), dict(self.__dict__))


class StoreDamagedError(_Picklable, StoreError):
    """A store file is missing, truncated, undecodable or fails its checksum. `file` is the path, `id_code` and
    `site` name the site when the file is an image chunk. `cellio verify STORE` lists every damaged site;
    `cellio verify STORE --repair RAW` rewrites them from the PNGs."""

    def __init__(self, message: str, *, file: str | None = None, id_code: str | None = None,
                 site: int | None = None):
        super().__init__(message)
        self.file = file
        self.id_code = id_code
        self.site = site


class ChecksumError(StoreDamagedError):
    """A chunk's bytes do not match its crc32c checksum (bit rot, a torn copy, an edited file)."""


class StoreLockedError(_Picklable, StoreError):
    """Another process holds the store's ingest lock. `holder` is its record: host, pid, started_at, purpose."""

    def __init__(self, message: str, *, holder: dict[str, Any] | None = None, lock: str | None = None):
        super().__init__(message)
        self.holder = dict(holder or {})
        self.lock = lock


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class DiskFullError(_Picklable, StoreError):
    """Not enough free space to write `path`: `needed_bytes` (an estimate of what the whole job still needs, or
    None when unknown) versus `free_bytes` (None when the file system does not say). Raised before an ingest
    starts when its estimate does not fit, and for ENOSPC/EDQUOT during any write; what was written before stays
    valid, so the same command rerun after freeing space resumes."""

    def __init__(self, path: str, needed_bytes: int | None, free_bytes: int | None, *, what: str = "this write",
                 hint: str = "free some space (or choose another path) and rerun the same command: it resumes"):
        need = f"needs about {_human_bytes(needed_bytes)}" if needed_bytes is not None else "needs more space"
        free = f"{_human_bytes(free_bytes)} free" if free_bytes is not None else "free space unknown"
        super().__init__(f"{path}: not enough disk space: {what} {need}, {free} there; {hint}")
        self.path = path
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes


class PipelineConfigError(CellioError, ValueError):
    """A loader or augmentation parameter is invalid; raised before any work runs."""


class MissingDependencyError(CellioError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the optional package '{package}', which is not installed. "
            f"Install it with: pip install 'cellio[{extra}]'  (or: pip install {package})"
        )
        self.package = package
        self.extra = extra


class CredentialsError(CellioError):
    """Kaggle credentials are missing or unsafe (never contains the key itself)."""


class DownloadError(CellioError):
    """A download, unzip or post-download verification failed."""


class ConfigError(CellioError, ValueError):
    """A configuration key or parameter value is unknown or invalid (trainer config, synthesize arguments)."""


class MainModuleError(CellioError, RuntimeError):
    """Worker processes cannot start from this program's main module: each would run it again, and it calls cellio
    at import time (no `if __name__ == "__main__":` guard), or it was read from standard input and cannot be run
    again. Raised in the parent before any work; the message says what to write (or to pass workers=1)."""


class RemoteStoreError(_Picklable, StoreError):
    """An object store (S3, GCS, an S3-compatible server) could not be reached, or refused the request, after the
    retries. `url` names the object (never the credentials); `attempts` is how many tries were made."""

    def __init__(self, message: str, *, url: str | None = None, attempts: int = 0):
        super().__init__(message)
        self.url = url
        self.attempts = attempts
