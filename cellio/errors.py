"""One exception hierarchy for cellio.

Every message says what was expected, what was found, and where (file, row, parameter), so a user can fix the
input without reading our code.
"""
from __future__ import annotations

__all__ = [
    "CellioError",
    "MetadataError",
    "ImageError",
    "StoreError",
    "StoreIncompleteError",
    "PipelineConfigError",
    "MissingDependencyError",
    "CredentialsError",
    "DownloadError",
    "ConfigError",
]


class CellioError(Exception):
    """Base class of every error cellio raises on purpose."""


class MetadataError(CellioError, ValueError):
    """An RxRx1 CSV is missing, malformed or inconsistent (message names file, row, column and value)."""


class ImageError(CellioError, ValueError):
    """A site image is missing, unreadable, truncated, or has the wrong size, bit depth or colour mode."""


class StoreError(CellioError):
    """A cellio Zarr store is missing, of an unknown format version, or inconsistent."""


class StoreIncompleteError(StoreError):
    """The store's ingest did not finish; rerun `cellio ingest` with the same arguments to complete it."""


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
