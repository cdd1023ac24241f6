"""RxRx3-core, Recursion's 18 GB subset of RxRx3 on Hugging Face: its layout (`layout.py`: `RXRX3_CORE` and the
file and column names), the metadata reader (`metadata.py`), the parquet shards (`shards.py`: the key index, read
shard by shard, and the per-process row-group cache), where a copy lives (`source.py`: a directory or an fsspec
URL) and the raw-data reader the ingest uses (`reader.py`: `READER`, with `read_site` decoding JPEG 2000). Importing
this package is light: pyarrow, fsspec and imagecodecs load when first used."""
from __future__ import annotations

from .layout import RXRX3_CORE
from .reader import READER

__all__ = ["RXRX3_CORE", "READER"]
