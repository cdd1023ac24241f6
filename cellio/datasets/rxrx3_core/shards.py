"""RxRx3-core's parquet shards: which ones a copy holds, the index of their keys, and one image's bytes by
(shard, row).

The index reads each shard's `__key__` column only, one shard at a time (never the image column: the set is 18 GB),
and keeps, per key, the shard and the row. A site's images are then read back with `ShardCache.blob`: each process
keeps its open parquet files and the row groups it read last, so the six channels of a well (consecutive rows) and
the next wells of the same row group cost one row-group read.
"""
from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ...errors import ImageError, MetadataError
from ..checks import Problems
from .layout import IMAGE_COLUMN, KEY_COLUMN, RXRX3_CORE, SHARD_GLOB
from .metadata import parse_address
from .source import open_source

__all__ = ["list_shards", "index_shard", "ShardCache", "shard_cache", "image_key"]

log = logging.getLogger(__name__)

_SHARD_NAME = re.compile(r"train-(\d+)-of-(\d+)\.parquet")
_KEY = r"(?P<experiment>[^/]+)/Plate(?P<plate>\d+)/(?P<well>[A-Z]+\d+)_s(?P<site>\d+)_(?P<channel>\d+)"
_KEY_FORM = "'{experiment}/Plate{plate}/{address}_s1_{channel}'"
MAX_OPEN_FILES = 4      # per process: a worker reads shards one after another, a site rarely spans two
MAX_ROW_GROUPS = 4      # per process: the groups a well straddles, and the one the next well starts in
REMOTE_BLOCK = 4 << 20  # object storage: bytes fetched per request (a real row group is ~1.3 MB of JPEG 2000)


def image_key(experiment: str, plate: int, well: str, channel: int) -> str:
    """The `__key__` of one channel image: 'compound-001/Plate10/AA12_s1_3'."""
    return f"{experiment}/Plate{int(plate)}/{well}_s1_{int(channel)}"


def list_shards(fs: Any, root: str, where: str) -> tuple[list[str], list[str]]:
    """(the shards present, relative to `root`, in name order; the shards of a numbered set `train-i-of-n` that
    are absent: a partial download). MetadataError when there is none."""
    found = sorted(p for p in fs.glob(f"{root}/{SHARD_GLOB}"))
    rel = [p[len(root) + 1:] if p.startswith(root + "/") else p for p in found]
    if not rel:
        raise MetadataError(f"{where}: no parquet shards {SHARD_GLOB}; expected a copy of the Hugging Face "
                            "repository recursionpharma/rxrx3-core (metadata_rxrx3_core.csv and data/train-*.parquet)")
    names = [_SHARD_NAME.fullmatch(p.rsplit("/", 1)[-1]) for p in rel]
    totals = {m.group(2) for m in names if m is not None}
    if None in names or len(totals) != 1:
        return rel, []  # not the numbered set: every shard there is the whole set
    (total,) = totals
    width = len(names[0].group(1))
    expected = [f"data/train-{i:0{width}d}-of-{total}.parquet" for i in range(int(total))]
    return rel, [p for p in expected if p not in set(rel)]


def _open_parquet(fs: Any, path: str) -> Any:
    import pyarrow.parquet as pq
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return pq.ParquetFile(path)  # pyarrow's own reader: no Python file object in between
    return pq.ParquetFile(fs.open(path, "rb", block_size=REMOTE_BLOCK))


def _check_schema(pf: Any, where: str) -> None:
    import pyarrow as pa

    schema = pf.schema_arrow
    jp2 = schema.field(IMAGE_COLUMN).type if IMAGE_COLUMN in schema.names else None
    has_bytes = jp2 is not None and pa.types.is_struct(jp2) and jp2.get_field_index("bytes") >= 0 and (
        pa.types.is_binary(jp2.field("bytes").type) or pa.types.is_large_binary(jp2.field("bytes").type))
    if KEY_COLUMN not in schema.names or not has_bytes:
        raise MetadataError(f"{where}: expected the columns {KEY_COLUMN!r} (string) and {IMAGE_COLUMN!r} "
                            f"(struct<bytes: binary, path: string>, the Hugging Face Image feature), found "
                            f"{schema.to_string(show_schema_metadata=False)}")


def index_shard(fs: Any, root: str, shard: str, where: str) -> pd.DataFrame:
    """The keys of one shard, parsed and checked: (row, key, well, channel) per parquet row, `well` the key's
    '{experiment}/Plate{plate}/{address}' (plate without leading zeros).

    MetadataError naming shard, row and key for a key not of the form '{experiment}/Plate{plate}/{address}_s1_{c}',
    a channel outside 1..6, a site other than 1, or a well outside the 1,536-well plate."""
    label = f"{where}/{shard}"
    try:
        pf = _open_parquet(fs, f"{root}/{shard}")
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise MetadataError(f"{label}: not a readable parquet file ({exc})") from None
    _check_schema(pf, label)
    keys = pd.Series(pf.read(columns=[KEY_COLUMN]).column(0).to_pylist(), dtype=object)
    parts = keys.astype(str).str.extract(f"^{_KEY}$")
    problems = Problems("RxRx3-core parquet keys")

    def report(mask: pd.Series, expected: str) -> None:
        for r in np.flatnonzero(mask.to_numpy())[:20]:
            problems.add(f"{label} row {r}: key {keys.iloc[r]!r}: expected {expected}")
        problems.count += max(int(mask.sum()) - 20, 0)

    bad_form = keys.isna() | parts["experiment"].isna()
    report(bad_form, f"a key of the form {_KEY_FORM}")
    ok = ~bad_form
    channel = pd.to_numeric(parts["channel"], errors="coerce")
    report(ok & ~channel.between(1, RXRX3_CORE.n_channels), f"a channel in 1..{RXRX3_CORE.n_channels}")
    site = pd.to_numeric(parts["site"], errors="coerce")
    report(ok & (site != 1), "site 1 (RxRx3-core images one site per well)")
    bad_well = ok & parts["well"].map(lambda w: isinstance(w, str) and parse_address(w) is None)
    report(bad_well.astype(bool), "a well of the 1,536-well plate (rows A..Z, AA..AF; columns 01..48)")
    problems.raise_if_any(where)
    well = parts["experiment"] + "/Plate" + pd.to_numeric(parts["plate"]).astype(np.int64).astype(str) + "/" \
        + parts["well"]
    return pd.DataFrame({"row": np.arange(len(keys), dtype=np.int64), "key": keys, "well": well,
                         "channel": channel.astype(np.int64)})


@dataclass
class _Shard:
    pf: Any
    starts: np.ndarray  # first row of each row group


@dataclass
class ShardCache:
    """One process's open shards and last row groups (LRU). A forked worker starts with none (`shard_cache`)."""

    pid: int = field(default_factory=os.getpid)
    files: OrderedDict[tuple[str, str], _Shard] = field(default_factory=OrderedDict)
    groups: OrderedDict[tuple[str, str, int], tuple[list[Any], Any]] = field(default_factory=OrderedDict)
    group_reads: int = 0  # row groups read so far (the benchmark and tests look at it)

    def _shard(self, source: str, shard: str) -> _Shard:
        entry = self.files.get((source, shard))
        if entry is None:
            fs, root, _ = open_source(source)
            try:
                pf = _open_parquet(fs, f"{root}/{shard}")
            except (OSError, ValueError) as exc:
                raise ImageError(f"{source}/{shard}: cannot read the parquet shard ({exc})") from None
            sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
            entry = _Shard(pf, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
            self.files[(source, shard)] = entry
            while len(self.files) > MAX_OPEN_FILES:
                self.files.popitem(last=False)
        self.files.move_to_end((source, shard))
        return entry

    def blob(self, source: str, shard: str, row: int, key: str) -> bytes:
        """The JPEG 2000 bytes at `row` of `shard`, whose key must be `key` (ImageError naming shard, row and key
        otherwise: the shard changed since the site table was read, or the row holds no image)."""
        where = f"{source}/{shard}"
        entry = self._shard(source, shard)
        n = int(entry.starts[-1])
        if not 0 <= row < n:
            raise ImageError(f"{where}: row {row} (key {key!r}) is beyond the shard's {n} rows; the shard changed "
                             "since the site table was read: read the data set again")
        g = int(np.searchsorted(entry.starts, row, side="right")) - 1
        cached = self.groups.get((source, shard, g))
        if cached is None:
            try:
                table = entry.pf.read_row_group(g, columns=[KEY_COLUMN, IMAGE_COLUMN])
            except (OSError, ValueError) as exc:
                raise ImageError(f"{where}: row group {g} (key {key!r}) cannot be read ({exc})") from None
            import pyarrow.compute as pc

            # struct_field keeps a null image struct null (StructArray.field would expose its child's slot)
            cached = (table.column(KEY_COLUMN).to_pylist(), pc.struct_field(table.column(IMAGE_COLUMN), "bytes").combine_chunks())
            self.group_reads += 1
            self.groups[(source, shard, g)] = cached
            while len(self.groups) > MAX_ROW_GROUPS:
                self.groups.popitem(last=False)
        self.groups.move_to_end((source, shard, g))
        keys, blobs = cached
        i = row - int(entry.starts[g])
        if keys[i] != key:
            raise ImageError(f"{where}: row {row} holds key {keys[i]!r}, expected {key!r}; the shard changed since "
                             "the site table was read: read the data set again")
        data = blobs[i].as_py()
        if not data:
            raise ImageError(f"{where}: row {row} (key {key!r}) holds no image bytes")
        return data


_CACHE: ShardCache | None = None


def shard_cache() -> ShardCache:
    """This process's cache (a new one after a fork: an inherited file handle shares its offset with the parent)."""
    global _CACHE
    if _CACHE is None or _CACHE.pid != os.getpid():
        _CACHE = ShardCache()
    return _CACHE
