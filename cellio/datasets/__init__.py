"""Data sets: what one looks like (`DatasetLayout`). One package per data set below this one (`rxrx1/`: its
layout and the RxRx1 constants)."""
from __future__ import annotations

from .layout import (LAYOUT_FORMAT, PIXEL_DTYPES, Channel, ControlGroup, DatasetLayout, IdFormats, Perturbations,
                     PlateGeometry)

__all__ = ["LAYOUT_FORMAT", "PIXEL_DTYPES", "Channel", "ControlGroup", "DatasetLayout", "IdFormats", "Perturbations",
           "PlateGeometry"]
