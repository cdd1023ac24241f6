"""The errors the maps package raises on purpose.

Each message names the column, batch, perturbation or file at fault and says what was expected and what was found.
The package stands on its own (it imports nothing from the rest of `trainer`), so it has its own small hierarchy.
"""
from __future__ import annotations

__all__ = ["MapsError", "MapInputError", "MissingControlsError", "MissingDependencyError"]


class MapsError(Exception):
    """Base class of every error the maps package raises on purpose."""


class MapInputError(MapsError, ValueError):
    """Embeddings or metadata are malformed: different lengths, NaNs, a missing column, an unknown option."""


class MissingControlsError(MapsError, ValueError):
    """A batch has too few negative-control wells to fit a control-based correction on it."""


class MissingDependencyError(MapsError, ImportError):
    """An optional package the maps need is not installed (the message gives the install command)."""
