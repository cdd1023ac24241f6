"""OME-Zarr HCS plates (OME-NGFF 0.4 and 0.5) in: the plate's structure validated with ome-zarr-models
(`plate.py`), its layout and the user's perturbation table (`layout.py`), the site table and each site's pixels
(`reader.py`: `READER`, `ome_zarr_reader`); the NGFF facts shared with the export (`ngff.py`, `models.py`).
Importing this package is light: zarr, pandas and ome-zarr-models are imported when a plate is read."""
from __future__ import annotations

from .reader import READER, ome_zarr_reader

__all__ = ["READER", "ome_zarr_reader"]
