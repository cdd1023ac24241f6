"""Data sets: what one looks like (`DatasetLayout`), how its raw files are read (`DatasetReader`), and the
registry of those cellio knows (`get_layout`, `get_dataset`). One package per data set below this one
(`rxrx1/`: its layout, metadata reader, synthetic generator and Kaggle client)."""
from __future__ import annotations

from .layout import (LAYOUT_FORMAT, PIXEL_DTYPES, Channel, ControlGroup, DatasetLayout, IdFormats, Perturbations,
                     PlateGeometry)
from .reader import DatasetReader
from .registry import find_dataset, get_dataset, get_layout, list_datasets, register_dataset

__all__ = ["LAYOUT_FORMAT", "PIXEL_DTYPES", "Channel", "ControlGroup", "DatasetLayout", "IdFormats", "Perturbations",
           "PlateGeometry", "DatasetReader", "find_dataset", "get_dataset", "get_layout", "list_datasets",
           "register_dataset"]
