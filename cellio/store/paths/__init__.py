"""The read paths of a store, one module each: local chunk files (`chunked.py`), local shard files
(`sharded.py`), objects in object storage, either layout (`remote.py`), and zarr-python for anything else
(`fallback.py`); `base.py` is what they share. `cellio.store.reader.Store` picks one when it opens a store."""
from __future__ import annotations

from .base import ReadContext, ReadPath
from .chunked import LocalChunks
from .fallback import ZarrFallback
from .remote import RemoteObjects
from .sharded import LocalShards

__all__ = ["ReadContext", "ReadPath", "LocalChunks", "LocalShards", "RemoteObjects", "ZarrFallback"]
