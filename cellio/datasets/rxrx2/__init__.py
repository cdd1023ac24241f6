"""RxRx2, Recursion's soluble-factor screen in HUVEC (rxrx.ai): its layout (`layout.py`: `RXRX2` and the file and
column names), the metadata reader (`metadata.py`) and the raw-data reader the ingest uses (`reader.py`: `READER`;
one PNG per channel, so the ingest's PNG route decodes them). Importing this package is light."""
from __future__ import annotations

from .layout import RXRX2
from .reader import READER

__all__ = ["RXRX2", "READER"]
