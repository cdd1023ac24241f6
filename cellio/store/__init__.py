"""The cellio store: a checksummed Zarr v3 group (normative spec: docs/data_format.md), its format, read path and
verification; the write path is cellio/ingestion/.

format.py names and versions; codecs.py the registered chunk codecs; shards.py the sharded image layout; images.py
the images array's metadata; tables.py and columns.py the site table and statistics arrays; stats.py the pixel
statistics; attributes.py the root attributes (the data set layout); journal.py the ingest journal; files.py how
store files are written; lock.py the writer lock; remote.py object-storage range reads; reader.py `open_store`
and `Store`, with one read path per module in paths/; verify.py `verify_store`.
"""
from __future__ import annotations

from .reader import Store, open_store
from .remote import RetryPolicy
from .stats import STATS_LEVELS
from .verify import VerifyReport, verify_store

__all__ = ["STATS_LEVELS", "Store", "open_store", "RetryPolicy", "VerifyReport", "verify_store"]
