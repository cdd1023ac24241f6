"""The cellio store format's names (normative spec: docs/data_format.md): the format name and version, the `status`
codes, the ingest-state files, what cellio may write into a store directory (`is_store_file`), Zarr v3 group
documents and chunk keys, and reading a store's JSON documents.

The rest of the format has a module each in this package: the chunk codecs (codecs.py), the sharded image layout
(shards.py), the image array's metadata (images.py), the one-chunk tables (tables.py) and their column encodings
(columns.py), the ingest journal (journal.py), the root attributes (attributes.py) and how files are written
(files.py). The write path (cellio/ingestion/), the read path (reader.py) and verify.py all take them from here.
"""
from __future__ import annotations

import json
import re
from typing import Any

from ..errors import StoreDamagedError, StoreError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "STATUS_MISSING", "STATUS_OK", "STATUS_FAILED", "JOURNAL_DIR",
           "CREATING_MARKER", "TMP_DIR", "LOCK_NAME", "AXES", "is_store_file", "has_checksums", "group_metadata",
           "chunk_key", "read_json"]

# the format's name since RxRx1 was the only data set; kept because every reader checks it (a store says which
# data set it holds in its `dataset_layout` attribute)
FORMAT_NAME = "cellio-rxrx1"

# 1.1: a crc32c codec ends every array's pipeline (1.0 stores: no checksums, still read)
# 1.2: the optional sharded image layout (`image_chunks` attribute; 1.1 stores are the "chunked" layout, still read)
# 1.3: the `dataset_layout` attribute (the data set's DatasetLayout; a store without it holds RxRx1)
FORMAT_VERSION = "1.3"
# axis order of the images array (site, y, x, channel): the root attribute `layout`
AXES = "NHWC"

# status array values
STATUS_MISSING, STATUS_OK, STATUS_FAILED = 0, 1, 2

JOURNAL_DIR = ".cellio-journal"      # per-batch completion records while an ingest is unfinished
CREATING_MARKER = ".cellio-creating"  # present only while the store skeleton is being written
TMP_DIR = ".cellio-tmp"              # files being written, renamed into place when whole
LOCK_NAME = ".cellio-lock"           # the ingest lock: who writes this store now (lock.py)

# Every path (relative to the store root) a cellio writer may create. Anything else in a store directory belongs
# to someone else: ingest refuses to build over it and never deletes it.
_STORE_FILE = re.compile(
    r"(zarr\.json"
    r"|(images|status|stats/[a-z]+|sites/\w+)/(zarr\.json|c(/\d+)+)"
    r"|(stats|sites)/zarr\.json"
    rf"|{re.escape(CREATING_MARKER)}|{re.escape(LOCK_NAME)}"
    rf"|({re.escape(JOURNAL_DIR)}|{re.escape(TMP_DIR)})/[^/]+)")


def is_store_file(rel: str) -> bool:
    """True for a path (relative to a store root, '/'-separated) that cellio itself writes."""
    return _STORE_FILE.fullmatch(rel) is not None


def has_checksums(attrs: dict[str, Any]) -> bool:
    """Whether a store's root attributes promise crc32c on every chunk (format >= 1.1)."""
    try:
        major, minor = (int(v) for v in str(attrs.get("format_version", "1.0")).split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (1, 1)


def group_metadata(attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    """zarr.json of a group (the root, sites/, stats/)."""
    return {"attributes": attributes if attributes is not None else {}, "zarr_format": 3, "node_type": "group"}


def chunk_key(meta: dict[str, Any], index: tuple[int, ...]) -> str:
    """Key of chunk `index` relative to its array, under the array's chunk_key_encoding ("c/0/0/0/0")."""
    enc = meta.get("chunk_key_encoding", {"name": "default"})
    sep = enc.get("configuration", {}).get("separator", "/" if enc["name"] == "default" else ".")
    if enc["name"] == "default":
        return "c" + sep + sep.join(str(i) for i in index)
    if enc["name"] == "v2":
        return sep.join(str(i) for i in index)
    raise StoreError(f"chunk_key_encoding {enc['name']!r} is not supported")


def read_json(fs: Any, path: str) -> dict[str, Any]:
    """A store's JSON document; StoreError when it is missing (not a store) or unreadable (damaged)."""
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise StoreError(f"{path} not found: not a cellio store (expected a Zarr v3 group written by "
                         f"`cellio ingest`)") from None
    except ValueError as exc:
        raise StoreDamagedError(f"{path} is not valid JSON ({exc}); the store is damaged", file=path) from None
