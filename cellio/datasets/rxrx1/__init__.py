"""RxRx1, the first data set cellio reads: its layout (`layout.py`: `RXRX1` and the RxRx1 constants), the metadata
reader (`metadata.py`: the Kaggle / rxrx.ai CSVs into the site table; `plate_groups.py`: the siRNA groups and
rotations), the raw-data reader the ingest uses (`reader.py`: `READER`), the synthetic generator (`synth/`) and
the Kaggle client (`kaggle/`). Importing this package is light: the readers import pandas when first called."""
from __future__ import annotations

from .layout import RXRX1
from .reader import READER

__all__ = ["RXRX1", "READER"]
