"""The cellio store format: how a store lays out its bytes (normative spec: docs/data_format.md).

One home for everything the write path (`cellio/ingestion.py`), the read path (`cellio/store.py`) and
`cellio/verification.py` must agree on, so none imports another:

- names and versions: `FORMAT_NAME`, `FORMAT_VERSION`, the `status` codes, the ingest-state files
  (`CREATING_MARKER`, `JOURNAL_DIR`, `TMP_DIR`, `LOCK_NAME`), `is_store_file` (what cellio may ever write);
- the sharded image layout: `ShardLayout` (shard keys, the shard index, which tiles a crop needs, encoding a
  shard and decoding a site's tiles from its bytes);
- chunk bytes: the image codecs (`codec_metadata`), `chunk_codec` -> `ChunkCodec` (encode, verify the crc32c
  trailer, decode, every failure a StoreDamagedError naming the file), `crc32c`, `images_metadata`, `chunk_key`;
- small one-chunk arrays (the site table, `status`, `stats/*`): `small_array_files`, `read_small_array`;
- site-table columns: logical dtypes and their encoding (`column_kind`, `encode_column`, `decode_column`);
- the ingest journal: `journal_key`, `read_journal`;
- where bytes go: `is_url`, `get_fs`, and `FileTarget`, the one place a store file is written (atomic on local
  disks; ENOSPC becomes DiskFullError).
"""
from __future__ import annotations

import errno
import itertools
import json
import logging
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import ChecksumError, DiskFullError, MissingDependencyError, StoreDamagedError, StoreError
from .schema import N_CHANNELS

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "CODECS", "LAYOUTS", "DEFAULT_SITES_PER_SHARD", "DEFAULT_TILE", "ShardLayout",
    "shard_layout", "image_layout", "STATUS_MISSING", "STATUS_OK", "STATUS_FAILED",
    "JOURNAL_DIR", "CREATING_MARKER", "TMP_DIR", "LOCK_NAME", "is_store_file", "has_checksums",
    "codec_metadata", "ChunkCodec", "chunk_codec", "crc32c", "images_metadata", "tile_shape", "group_metadata",
    "chunk_key",
    "small_array_files", "read_small_array", "read_json",
    "column_kind", "encode_column", "decode_column", "encode_strings", "decode_strings",
    "journal_key", "read_journal", "is_url", "get_fs", "FileTarget",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "cellio-rxrx1"
# 1.1: a crc32c codec ends every array's pipeline (1.0 stores: no checksums, still read)
# 1.2: the optional sharded image layout (`image_chunks` attribute; 1.1 stores are the "chunked" layout, still read)
FORMAT_VERSION = "1.2"
CODECS: tuple[str, ...] = ("none", "lz4", "zstd")
# image layouts: "chunked" = one chunk file per site (format 1.1); "sharded" = a shard file per group of sites, an
# inner chunk per tile of a site (Zarr v3 sharding_indexed), so a crop decodes only the tiles it overlaps
LAYOUTS: tuple[str, ...] = ("chunked", "sharded")
DEFAULT_SITES_PER_SHARD = 32
DEFAULT_TILE = 128

# status array values
STATUS_MISSING, STATUS_OK, STATUS_FAILED = 0, 1, 2

JOURNAL_DIR = ".cellio-journal"      # per-batch completion records while an ingest is unfinished
CREATING_MARKER = ".cellio-creating"  # present only while the store skeleton is being written
TMP_DIR = ".cellio-tmp"              # files being written, renamed into place when whole
LOCK_NAME = ".cellio-lock"           # the ingest lock: who writes this store now (cellio/_lock.py)

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


# ----------------------------------------------------------------------------------------------- checksums
_crc32c_impl: Any = None


def crc32c(data: Any) -> int:
    """CRC-32C (Castagnoli) of a bytes-like object, as the Zarr v3 `crc32c` codec computes it."""
    global _crc32c_impl
    if _crc32c_impl is None:
        try:
            import google_crc32c
        except ImportError:
            raise MissingDependencyError("google-crc32c", "all", "the crc32c checksums of a cellio store") from None
        _crc32c_impl = google_crc32c.value
    if not isinstance(data, (bytes, np.ndarray)):
        data = np.frombuffer(data, dtype=np.uint8)  # google_crc32c takes bytes or arrays, not memoryviews
    return _crc32c_impl(data)


# ----------------------------------------------------------------------------------------------- array metadata
_CRC32C = {"name": "crc32c"}


def codec_metadata(codec: str, checksum: bool = True) -> list[dict[str, Any]]:
    """The Zarr v3 `codecs` list for one of CODECS (what ingest writes into images/zarr.json).

    checksum: end the pipeline with Zarr v3's `crc32c` codec (bytes -> bytes, a 4-byte little-endian CRC-32C of
    the encoded chunk appended), which every v3 client verifies on read. Format 1.1 always writes it.
    """
    if codec == "none":
        codecs: list[dict[str, Any]] = [{"name": "bytes"}]
    elif codec == "lz4":
        # bitshuffle groups the mostly-zero high bits of dim cell images (~0.54x vs ~0.66x of raw without it);
        # clevel 1 encodes ~2.5x faster than 5 for ~2% more bytes (docs/performance.md)
        codecs = [{"name": "bytes"}, {"name": "blosc", "configuration": {
            "typesize": 1, "cname": "lz4", "clevel": 1, "shuffle": "bitshuffle", "blocksize": 0}}]
    elif codec == "zstd":
        codecs = [{"name": "bytes"}, {"name": "zstd", "configuration": {"level": 1, "checksum": False}}]
    else:
        raise StoreError(f"codec {codec!r} is unknown; expected one of {', '.join(CODECS)}")
    return codecs + [dict(_CRC32C)] if checksum else codecs


@dataclass(frozen=True)
class ChunkCodec:
    """One chunk's bytes <-> its array for a `bytes [+ blosc|zstd] [+ crc32c]` pipeline.

    compressor: a numcodecs Blosc/Zstd, or None for raw bytes. checksum: a crc32c trailer (4 bytes, little
    endian) follows the payload. Every failure (checksum mismatch, wrong size, undecodable bytes) is a
    StoreDamagedError naming the file; callers add which site it holds.
    """

    compressor: Any | None
    checksum: bool

    @property
    def name(self) -> str:
        return "none" if self.compressor is None else str(self.compressor.codec_id)

    def encode(self, data: np.ndarray) -> bytes | memoryview:
        payload = memoryview(np.ascontiguousarray(data)).cast("B") if self.compressor is None \
            else self.compressor.encode(data)
        if not self.checksum:
            return payload
        return bytes(payload) + crc32c(payload).to_bytes(4, "little")

    def payload(self, data: Any, *, file: str, verify: bool = True) -> memoryview:
        """The chunk's encoded bytes without the crc32c trailer, checked against it when `verify`."""
        mv = memoryview(data).cast("B")
        if not self.checksum:
            return mv
        if len(mv) < 4:
            raise ChecksumError(f"{file}: {len(mv)} bytes, too short to hold its 4-byte crc32c checksum; the chunk "
                                f"is truncated", file=file)
        body = mv[:-4]
        if verify:
            stored, actual = int.from_bytes(mv[-4:], "little"), crc32c(body)
            if stored != actual:
                raise ChecksumError(f"{file}: crc32c checksum mismatch (stored {stored:#010x}, computed "
                                    f"{actual:#010x} over {len(body)} bytes); the chunk is damaged", file=file)
        return body

    def decode(self, data: Any, out: np.ndarray, *, file: str, verify: bool = True) -> None:
        """Decode one whole chunk into `out` (C-contiguous, exactly the chunk's size)."""
        body = self.payload(data, file=file, verify=verify)
        flat = out.reshape(-1).view(np.uint8)
        if self.compressor is None:
            if len(body) != flat.nbytes:
                raise StoreDamagedError(f"{file}: {len(body)} bytes of pixels, expected {flat.nbytes}; the chunk is "
                                        f"truncated or damaged", file=file)
            flat[...] = np.frombuffer(body, dtype=np.uint8)
            return
        if self.compressor.codec_id == "blosc":
            # blosc trusts its 16-byte header (uint32 LE nbytes at 4, cbytes at 12): a truncated buffer is read
            # past its end, giving garbage or "error during blosc decompression: -1"
            head = bytes(body[:16])
            nbytes, cbytes = (int.from_bytes(head[4:8], "little"), int.from_bytes(head[12:16], "little")) \
                if len(head) == 16 else (-1, -1)
            if cbytes != len(body) or nbytes != flat.nbytes:
                raise StoreDamagedError(f"{file}: cannot decode the blosc chunk: its header promises {cbytes} bytes "
                                        f"decoding to {nbytes}, found {len(body)} bytes for a {flat.nbytes}-byte "
                                        f"site; the chunk is truncated or damaged", file=file)
        try:
            got = self.compressor.decode(body, out=flat)
            n = np.asarray(got).nbytes if got is not None else flat.nbytes
        except Exception as exc:  # blosc/zstd say only "error during blosc decompression: -1": say where
            raise StoreDamagedError(f"{file}: cannot decode the {self.name} chunk ({type(exc).__name__}: {exc}); "
                                    f"the chunk is truncated or damaged", file=file) from None
        if n != flat.nbytes:
            raise StoreDamagedError(f"{file}: decoded to {n} bytes, expected {flat.nbytes}; the chunk is damaged",
                                    file=file)


def chunk_codec(codecs: list[dict[str, Any]]) -> ChunkCodec:
    """The ChunkCodec of a `bytes [+ blosc|zstd] [+ crc32c]` pipeline.

    Raises StoreError for pipelines the fast path does not handle (the caller then falls back to zarr-python).
    """
    import numcodecs

    if not codecs or codecs[0].get("name") != "bytes":
        raise StoreError(f"codec pipeline {codecs} does not start with 'bytes'")
    rest = list(codecs[1:])
    checksum = bool(rest) and rest[-1].get("name") == "crc32c"
    if checksum:
        rest = rest[:-1]
    if not rest:
        return ChunkCodec(None, checksum)
    if len(rest) > 1:
        raise StoreError(f"codec pipeline {codecs} has more than one compressor")
    name, cfg = rest[0]["name"], rest[0].get("configuration", {})
    if name == "blosc":
        shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
                   "bitshuffle": numcodecs.Blosc.BITSHUFFLE}[cfg.get("shuffle", "noshuffle")]
        return ChunkCodec(numcodecs.Blosc(cname=cfg.get("cname", "lz4"), clevel=int(cfg.get("clevel", 5)),
                                          shuffle=shuffle, blocksize=int(cfg.get("blocksize", 0))), checksum)
    if name == "zstd":
        if cfg.get("checksum"):
            raise StoreError("zstd with checksum is not handled by the fast path")
        return ChunkCodec(numcodecs.Zstd(level=int(cfg.get("level", 0))), checksum)
    raise StoreError(f"codec {name!r} is not handled by the fast path")


def images_metadata(n_sites: int, shape: tuple[int, int], codec: str, checksum: bool = True,
                    layout: str = "chunked", sites_per_shard: int = DEFAULT_SITES_PER_SHARD,
                    tile: tuple[int, int] | None = None) -> dict[str, Any]:
    """images/zarr.json: uint8 (N, H, W, 6), NHWC, crc32c-checksummed.

    layout "chunked": one site per chunk (format 1.1). "sharded": a shard of `sites_per_shard` sites per file,
    `sharding_indexed` with an inner chunk per (th, tw) tile of a site (index first, checksummed); the shard's
    spatial shape is H and W rounded up to whole tiles (edge tiles are padded with the fill value 0).
    """
    H, W = shape
    if layout == "sharded":
        th, tw = tile_shape(shape, tile)
        grid = [int(sites_per_shard), -(-H // th) * th, -(-W // tw) * tw, N_CHANNELS]
        codecs = [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [1, th, tw, N_CHANNELS], "codecs": codec_metadata(codec, checksum),
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, dict(_CRC32C)],
            "index_location": "start"}}]
    elif layout == "chunked":
        grid, codecs = [1, H, W, N_CHANNELS], codec_metadata(codec, checksum)
    else:
        raise StoreError(f"layout {layout!r} is unknown; expected one of {', '.join(LAYOUTS)}")
    return {"shape": [n_sites, H, W, N_CHANNELS], "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": grid}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0, "codecs": codecs, "attributes": {},
            "dimension_names": ["site", "y", "x", "channel"], "zarr_format": 3, "node_type": "array",
            "storage_transformers": []}


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


# ----------------------------------------------------------------------------------------------- sharded layout
_EMPTY = np.uint64(2**64 - 1)  # sharding_indexed: (offset, nbytes) of an inner chunk that is not stored


def tile_shape(shape: tuple[int, int], tile: int | tuple[int, int] | None) -> tuple[int, int]:
    """(th, tw) of a sharded store's tiles: `tile` (an int for square tiles; None: DEFAULT_TILE), at most H x W."""
    H, W = shape
    if tile is None:
        tile = DEFAULT_TILE
    th, tw = (tile, tile) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
    if th < 1 or tw < 1:
        raise StoreError(f"tile {tile!r}: expected a positive tile size (pixels)")
    return min(th, H), min(tw, W)


def image_layout(meta: dict[str, Any]) -> str:
    """"chunked" (one site per chunk), "sharded" (cellio's sharding_indexed layout) or "other" (anything else)."""
    grid = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    codecs = meta.get("codecs") or [{}]
    if meta.get("storage_transformers"):
        return "other"
    if codecs[0].get("name") == "sharding_indexed":
        try:
            ShardLayout.from_metadata(meta)
        except (StoreError, KeyError, ValueError, TypeError):
            return "other"
        return "sharded"
    return "chunked" if grid == (1, *meta["shape"][1:]) else "other"


@dataclass(frozen=True)
class ShardLayout:
    """The byte layout of a sharded images array (docs/data_format.md#sharded-layout).

    A shard file holds `sites` consecutive sites. It starts with the index: for every inner chunk in C order of
    (site, tile row, tile column), its (offset, nbytes) as two little-endian uint64 (2**64-1 twice: not stored),
    then the index's crc32c (4 bytes). Inner chunks follow, each encoded with `codec` (crc32c at the end). The
    cellio writer stores a site's tiles contiguously in C order, so a crop's tiles are one byte range.
    """

    sites: int                      # sites per shard
    image: tuple[int, int, int]     # (H, W, C) of a site
    tile: tuple[int, int]           # (th, tw)
    codec: ChunkCodec
    meta: dict[str, Any]            # images/zarr.json (for chunk keys)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> "ShardLayout":
        grid = [int(v) for v in meta["chunk_grid"]["configuration"]["chunk_shape"]]
        (sh,) = meta["codecs"]
        if sh.get("name") != "sharding_indexed":
            raise StoreError("not a sharding_indexed array")
        cfg = sh["configuration"]
        inner = [int(v) for v in cfg["chunk_shape"]]
        H, W, C = (int(v) for v in meta["shape"][1:])
        index_ok = cfg.get("index_codecs") == [{"name": "bytes", "configuration": {"endian": "little"}},
                                               dict(_CRC32C)]
        if inner[0] != 1 or inner[3] != C or grid[3] != C or cfg.get("index_location", "end") != "start" \
                or not index_ok or grid[1] % inner[1] or grid[2] % inner[2] or grid[1] < H or grid[2] < W:
            raise StoreError(f"sharding configuration {cfg} (shard {grid}) is not cellio's sharded layout")
        return cls(grid[0], (H, W, C), (inner[1], inner[2]), chunk_codec(cfg["codecs"]), meta)

    @property
    def tiles(self) -> tuple[int, int]:
        """(tile rows, tile columns) of one site."""
        return -(-self.image[0] // self.tile[0]), -(-self.image[1] // self.tile[1])

    @property
    def index_nbytes(self) -> int:
        ty, tx = self.tiles
        return self.sites * ty * tx * 16 + 4

    def locate(self, pos: int) -> tuple[int, int]:
        """(shard number, site within the shard) of array position `pos`."""
        return pos // self.sites, pos % self.sites

    def shard_key(self, shard: int) -> str:
        return chunk_key(self.meta, (shard, 0, 0, 0))

    def decode_index(self, data: Any, *, file: str) -> np.ndarray:
        """The shard index as uint64 (sites, tile rows, tile columns, 2), its checksum verified (always)."""
        mv = memoryview(data).cast("B")
        if len(mv) != self.index_nbytes:
            raise StoreDamagedError(f"{file}: the shard index is {len(mv)} bytes, expected {self.index_nbytes}; the "
                                    f"shard is truncated or damaged", file=file)
        body = ChunkCodec(None, True).payload(mv, file=file + " (shard index)")
        ty, tx = self.tiles
        return np.frombuffer(body, dtype="<u8").reshape(self.sites, ty, tx, 2).astype(np.uint64)

    def tile_range(self, y: int, x: int, h: int, w: int) -> tuple[int, int, int, int]:
        """(r0, r1, c0, c1): the tile rows r0..r1-1 and columns c0..c1-1 a crop (y, x, h, w) overlaps."""
        th, tw = self.tile
        return y // th, -(-(y + h) // th), x // tw, -(-(x + w) // tw)

    def site_span(self, entries: np.ndarray, tiles: tuple[int, int, int, int], *, file: str) -> tuple[int, int]:
        """The byte range [start, end) of the shard holding the given tiles of one site (entries: its index
        rows, (tile rows, tile columns, 2)). A tile that is not stored is damage: never read as zeros."""
        r0, r1, c0, c1 = tiles
        sel = entries[r0:r1, c0:c1].reshape(-1, 2)
        if np.any(sel == _EMPTY):
            raise StoreDamagedError(f"{file}: the shard index has no inner chunk for this site (a stored site's "
                                    f"tiles are missing from its shard); the store is damaged", file=file)
        start = int(sel[:, 0].min())
        return start, int((sel[:, 0] + sel[:, 1]).max())

    def decode_site(self, data: Any, start: int, entries: np.ndarray, tiles: tuple[int, int, int, int],
                    crop: tuple[int, int, int, int], dst: np.ndarray, scratch: np.ndarray, *, file: str,
                    verify: bool = True) -> None:
        """Decode the tiles `tiles` of one site from `data` (the shard's bytes from offset `start`) and write the
        crop (y, x, h, w) of the site into dst (h, w, C). scratch: a (th * tw * C,) uint8 buffer."""
        th, tw = self.tile
        C = self.image[2]
        y, x, h, w = crop
        mv = memoryview(data).cast("B")
        r0, r1, c0, c1 = tiles
        tile_buf = scratch[:th * tw * C].reshape(th, tw, C)
        for r in range(r0, r1):
            ys, ye = max(y, r * th), min(y + h, (r + 1) * th)
            for c in range(c0, c1):
                off, n = (int(v) for v in entries[r, c])
                xs, xe = max(x, c * tw), min(x + w, (c + 1) * tw)
                full = ys == r * th and ye == (r + 1) * th and xs == c * tw and xe == (c + 1) * tw
                chunk = mv[off - start:off - start + n]
                if full and w == tw:  # the tile is a whole, contiguous part of dst: decode straight into it
                    self.codec.decode(chunk, dst[ys - y:ye - y], file=file, verify=verify)
                    continue
                self.codec.decode(chunk, tile_buf, file=file, verify=verify)
                dst[ys - y:ye - y, xs - x:xe - x] = tile_buf[ys - r * th:ye - r * th, xs - c * tw:xe - c * tw]

    def encode_tiles(self, site: np.ndarray) -> list[bytes]:
        """One (H, W, C) uint8 site -> its encoded tiles in C order (edge tiles padded with zeros)."""
        th, tw = self.tile
        ty, tx = self.tiles
        H, W, C = self.image
        if (ty * th, tx * tw) != (H, W):
            pad = np.zeros((ty * th, tx * tw, C), dtype=np.uint8)
            pad[:H, :W] = site
            site = pad
        return [bytes(self.codec.encode(np.ascontiguousarray(site[r * th:(r + 1) * th, c * tw:(c + 1) * tw])))
                for r in range(ty) for c in range(tx)]

    def assemble(self, tiles: dict[int, list[bytes]]) -> bytes:
        """A whole shard file from `encode_tiles` output by site-within-shard; absent sites are not stored."""
        ty, tx = self.tiles
        index = np.full((self.sites, ty, tx, 2), _EMPTY, dtype="<u8")
        parts: list[bytes] = []
        offset = self.index_nbytes
        for k in sorted(tiles):
            for t, blob in enumerate(tiles[k]):
                index[k, t // tx, t % tx] = (offset, len(blob))
                parts.append(blob)
                offset += len(blob)
        head = index.tobytes()
        return b"".join([head, crc32c(head).to_bytes(4, "little"), *parts])

    def encode_shard(self, sites: dict[int, np.ndarray]) -> bytes:
        """A whole shard file: `sites` maps site-within-shard -> (H, W, C) uint8; absent sites are not stored."""
        return self.assemble({k: self.encode_tiles(v) for k, v in sites.items()})


def shard_layout(meta: dict[str, Any]) -> ShardLayout:
    """The ShardLayout of a sharded images/zarr.json (StoreError if it is not cellio's sharded layout)."""
    return ShardLayout.from_metadata(meta)


# ----------------------------------------------------------------------------------------------- small arrays
_SMALL_CODECS: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "little"}},
                                        {"name": "zstd", "configuration": {"level": 0, "checksum": False}},
                                        dict(_CRC32C)]
_SMALL_CODECS_1_0: list[dict[str, Any]] = _SMALL_CODECS[:2]  # format 1.0: no checksum


def small_array_files(data: np.ndarray, attributes: dict[str, Any] | None = None,
                      checksum: bool = True) -> dict[str, bytes]:
    """zarr.json + the single chunk of a one-chunk Zarr v3 array (bytes + zstd + crc32c), as {relative key: bytes}.

    checksum=False writes the format 1.0 pipeline (bytes + zstd): only for repairing or resuming a 1.0 store.

    The site table and statistics are small: writing them directly keeps ingest and `open_store` free of
    zarr-python's import and per-call costs while staying plain Zarr v3 (tests read them back with zarr-python
    and tensorstore).
    """
    import numcodecs

    data = np.ascontiguousarray(data)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    kind = "bool" if data.dtype == np.bool_ else data.dtype.name
    fill: Any = False if kind == "bool" else 0.0 if data.dtype.kind == "f" else 0
    meta = {"shape": list(data.shape), "data_type": kind,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [max(1, d) for d in data.shape]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": fill, "codecs": _SMALL_CODECS if checksum else _SMALL_CODECS_1_0,
            "attributes": attributes or {}, "zarr_format": 3,
            "node_type": "array", "storage_transformers": []}
    files = {"zarr.json": json.dumps(meta, indent=2).encode()}
    if data.size:
        codec = ChunkCodec(numcodecs.Zstd(level=0), checksum=checksum)
        files[chunk_key(meta, tuple(0 for _ in data.shape))] = bytes(codec.encode(data))
    return files


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


def _missing(file: str, what: str) -> StoreDamagedError:
    return StoreDamagedError(f"{file}: chunk file missing ({what}); the store is damaged, and a missing chunk is "
                             f"never read as fill values: `cellio verify STORE` lists every damaged file", file=file)


def read_small_array(fs: Any, path: str, storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """Read a whole array written by `small_array_files`; anything else (rechunked, other codecs) via zarr.

    A missing chunk is a StoreDamagedError naming the file, never the fill value; a checksum or size mismatch too.
    """
    import numcodecs

    meta = read_json(fs, f"{path}/zarr.json")
    shape = tuple(meta["shape"])
    grid = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    if meta.get("codecs") in (_SMALL_CODECS, _SMALL_CODECS_1_0) and grid == tuple(max(1, d) for d in shape) and \
            meta.get("chunk_key_encoding", {}).get("name") == "default":
        dtype = np.dtype("bool" if meta["data_type"] == "bool" else meta["data_type"]).newbyteorder("<")
        if not all(shape):
            return np.zeros(shape, dtype=dtype)
        file = f"{path}/" + chunk_key(meta, tuple(0 for _ in shape))
        try:
            data = fs.cat_file(file)
        except FileNotFoundError:
            raise _missing(file, f"the only chunk of the {shape} {meta['data_type']} array {path}") from None
        body = ChunkCodec(None, meta["codecs"] == _SMALL_CODECS).payload(data, file=file)
        try:
            raw = numcodecs.Zstd().decode(body)
        except Exception as exc:
            raise StoreDamagedError(f"{file}: cannot decode the zstd chunk ({exc}); the chunk is damaged",
                                    file=file) from None
        want = math.prod(shape) * dtype.itemsize
        if len(raw) != want:
            raise StoreDamagedError(f"{file}: decodes to {len(raw)} bytes, expected {want} for shape {shape} "
                                    f"{meta['data_type']}; the chunk is damaged", file=file)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    _check_chunks_exist(fs, path, meta)
    import zarr

    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols:
        return zarr.open_array(path, mode="r")[...]
    return zarr.open_array(fs.unstrip_protocol(path), mode="r", storage_options=storage_options or None)[...]


def _check_chunks_exist(fs: Any, path: str, meta: dict[str, Any]) -> None:
    """Every chunk (or shard) file of a regular-grid array exists: zarr-python would read a missing one as the
    fill value. (Inner chunks missing from a shard are not seen here.)"""
    if meta.get("chunk_grid", {}).get("name") != "regular":
        return
    shape = meta["shape"]
    grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
    if not all(shape):
        return
    counts = [math.ceil(n / c) for n, c in zip(shape, grid)]
    for index in itertools.product(*(range(k) for k in counts)):
        file = f"{path}/{chunk_key(meta, index)}"
        if not fs.exists(file):
            raise _missing(file, f"chunk {index} of the {tuple(shape)} array {path}")


# ----------------------------------------------------------------------------------------------- site-table columns
def column_kind(s: pd.Series) -> str:
    """The logical dtype a site-table column is stored as: "Int64", "bool", "int64", "float64" or "str"."""
    if isinstance(s.dtype, pd.Int64Dtype):
        return "Int64"
    if pd.api.types.is_bool_dtype(s):
        return "bool"
    if pd.api.types.is_integer_dtype(s):
        return "int64"
    if pd.api.types.is_float_dtype(s):
        return "float64"
    return "str"


def encode_strings(values: Any) -> np.ndarray:
    """str values -> uint8 (N, L): UTF-8 bytes zero-padded to the longest value (L >= 1)."""
    enc = [str(v).encode("utf-8") for v in values]
    width = max((len(b) for b in enc), default=0) or 1
    return np.frombuffer(np.array(enc, dtype=f"S{width}").tobytes(), dtype=np.uint8).reshape(len(enc), width)


def decode_strings(raw: np.ndarray) -> np.ndarray:
    """uint8 (N, L) zero-padded UTF-8 -> object array of str."""
    n, width = raw.shape
    if width == 0:
        return np.array([""] * n, dtype=object)
    as_bytes = np.ascontiguousarray(raw).view(f"S{width}").ravel()
    return np.array([b.decode("utf-8") for b in as_bytes], dtype=object)


def encode_column(s: pd.Series, kind: str) -> np.ndarray:
    """A site-table column as stored: strings as `encode_strings`, nullable Int64 with -1 for missing."""
    if kind == "Int64":
        return s.fillna(-1).astype(np.int64).to_numpy()
    if kind == "str":
        return encode_strings(s)
    return s.to_numpy().astype(kind)


def decode_column(raw: np.ndarray, kind: str) -> Any:
    """The inverse of `encode_column`: a column ready for a DataFrame."""
    if kind == "str":
        return decode_strings(raw)
    if kind == "Int64":
        col = pd.array(np.where(raw < 0, 0, raw), dtype="Int64")
        col[raw < 0] = pd.NA
        return col
    if kind == "bool":
        return raw.astype(bool)
    return raw.astype(kind)


# ----------------------------------------------------------------------------------------------- journal
def journal_key(first: int, last: int) -> str:
    """The journal file of the batch of sites first..last (zero-padded, so names sort by site)."""
    return f"{JOURNAL_DIR}/{first:010d}-{last:010d}.json"


def read_journal(fs: Any, root: str) -> dict[int, dict[str, Any]]:
    """All per-batch completion records of an unfinished ingest, by site index (later records win)."""
    from ._remote import with_retries

    jdir = f"{root}/{JOURNAL_DIR}"
    entries: dict[int, dict[str, Any]] = {}
    try:
        listed = with_retries(lambda: fs.ls(jdir, detail=False), fs.unstrip_protocol(jdir), what="listing")
        names = sorted(p for p in listed if p.endswith(".json"))
    except FileNotFoundError:
        return entries
    for name in names:
        try:
            with fs.open(name, "rb") as f:
                batch = json.loads(f.read())
        except (OSError, ValueError) as exc:  # only a torn write from a killed run: its sites are redone
            log.warning("ignoring unreadable journal file %s: %s", name, exc)
            continue
        for e in batch["entries"]:
            entries[int(e["i"])] = e
    return entries


# ----------------------------------------------------------------------------------------------- where bytes go
def is_url(path: str | os.PathLike[str]) -> bool:
    """True for fsspec URLs other than plain local files."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def get_fs(path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, root path without protocol) for a local path or URL."""
    import fsspec.core

    s = str(path)
    if not is_url(s):
        s = os.path.abspath(s[7:] if s.startswith("file://") else s)
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), s
    fs, root = fsspec.core.url_to_fs(s, **(storage_options or {}))
    return fs, root.rstrip("/")


def free_bytes(path: str) -> int | None:
    """Free bytes on the file system holding local `path` (or its nearest existing parent); None if unknown."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return None


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class FileTarget:
    """Writes into a store root: atomic temp+rename on local disks, whole-object puts on fsspec URLs.

    A write that runs out of space (ENOSPC, EDQUOT) leaves no partial file behind and raises DiskFullError naming
    the file; what was written before stays valid, so the interrupted job resumes.
    """

    def __init__(self, path: str, storage_options: dict[str, Any] | None):
        self.path = path
        self.storage_options = storage_options or {}
        self.fs, self.root = get_fs(path, storage_options)
        self.local = not is_url(path)

    def key(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.key(rel))

    def free_bytes(self) -> int | None:
        """Free space where the store lives (local disks; None for URLs)."""
        return free_bytes(self.root) if self.local else None

    def write(self, rel: str, data: bytes | memoryview) -> None:
        full = self.key(rel)
        tmp = None
        try:
            if self.local:
                os.makedirs(os.path.dirname(full), exist_ok=True)
                tmpdir = self.key(TMP_DIR)
                os.makedirs(tmpdir, exist_ok=True)
                tmp = os.path.join(tmpdir, uuid.uuid4().hex)
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, full)  # atomic: readers and reruns see the old file or the whole new one
            else:  # one put; transient failures retried, then RemoteStoreError naming the object
                from ._remote import with_retries

                blob = bytes(data)
                with_retries(lambda: self.fs.pipe_file(full, blob), self.fs.unstrip_protocol(full), what="put")
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                raise
            if tmp is not None:
                try:
                    os.remove(tmp)
                except OSError:
                    pass
            raise DiskFullError(full, len(memoryview(data).cast("B")), self.free_bytes(),
                                what=f"writing this file ({exc.strerror})") from None

    def write_json(self, rel: str, obj: Any) -> None:
        self.write(rel, json.dumps(obj, indent=2).encode())

    def write_small_array(self, rel: str, data: np.ndarray, checksum: bool = True) -> None:
        """A whole one-chunk array (see `small_array_files`) under `rel`."""
        for key, blob in small_array_files(data, checksum=checksum).items():
            self.write(f"{rel}/{key}", blob)

    def files(self, skip: tuple[str, ...] = ()) -> list[str]:
        """Every file under the root, relative to it ('/'-separated), sorted; [] when the root does not exist.

        skip: relative directories not to descend into (images/c: only chunk files, possibly 100,000s of them).
        """
        out: list[str] = []
        if self.local:
            for dirpath, dirs, names in os.walk(self.root):
                rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
                rel = "" if rel == "." else rel + "/"
                dirs[:] = [d for d in dirs if rel + d not in skip]
                out += [rel + n for n in names]
            return sorted(out)
        prefix = self.root.rstrip("/") + "/"
        try:
            found = self.fs.find(self.root)
        except FileNotFoundError:
            return []
        for p in found:
            rel = p[len(prefix):] if p.startswith(prefix) else None
            if rel and not any(rel.startswith(d + "/") for d in skip):
                out.append(rel)
        return sorted(out)

    def remove(self, rel: str, recursive: bool = False) -> None:
        """Delete one of cellio's own files or directories (never called on anything else)."""
        full = self.key(rel)
        if self.local:
            if os.path.isdir(full):
                shutil.rmtree(full)
            elif os.path.exists(full):
                os.remove(full)
        elif self.fs.exists(full):
            self.fs.rm(full, recursive=recursive)
