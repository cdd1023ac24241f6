"""Stores out to other formats: `export_ome_zarr` (`ome_zarr.py`: OME-Zarr HCS plates, OME-NGFF 0.4 or 0.5)."""
from __future__ import annotations

from .ome_zarr import ExportedPlate, ExportReport, export_ome_zarr

__all__ = ["export_ome_zarr", "ExportReport", "ExportedPlate"]
