"""The cellio store format: how a store lays out its bytes (normative spec: docs/data_format.md).

One home for everything the write path (`cellio/ingestion.py`), the read path (`cellio/store.py`) and
`cellio/verification.py` must agree on, so none imports another:

- names and versions: `FORMAT_NAME`, `FORMAT_VERSION`, the `status` codes, the ingest-state files
  (`CREATING_MARKER`, `JOURNAL_DIR`, `TMP_DIR`, `LOCK_NAME`), `is_store_file` (what cellio may ever write);
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
    "FORMAT_NAME", "FORMAT_VERSION", "CODECS", "STATUS_MISSING", "STATUS_OK", "STATUS_FAILED",
    "JOURNAL_DIR", "CREATING_MARKER", "TMP_DIR", "LOCK_NAME", "is_store_file", "has_checksums",
    "codec_metadata", "ChunkCodec", "chunk_codec", "crc32c", "images_metadata", "group_metadata", "chunk_key",
    "small_array_files", "read_small_array", "read_json",
    "column_kind", "encode_column", "decode_column", "encode_strings", "decode_strings",
    "journal_key", "read_journal", "is_url", "get_fs", "FileTarget",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "cellio-rxrx1"
FORMAT_VERSION = "1.1"  # 1.1: a crc32c codec ends every array's pipeline (1.0 stores: no checksums, still read)
CODECS: tuple[str, ...] = ("none", "lz4", "zstd")

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


def images_metadata(n_sites: int, shape: tuple[int, int], codec: str, checksum: bool = True) -> dict[str, Any]:
    """images/zarr.json: uint8 (N, H, W, 6), one site per chunk, NHWC, crc32c-checksummed (format 1.1)."""
    H, W = shape
    return {"shape": [n_sites, H, W, N_CHANNELS], "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, H, W, N_CHANNELS]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0, "codecs": codec_metadata(codec, checksum), "attributes": {},
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
    jdir = f"{root}/{JOURNAL_DIR}"
    entries: dict[int, dict[str, Any]] = {}
    try:
        names = sorted(p for p in fs.ls(jdir, detail=False) if p.endswith(".json"))
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
            else:
                self.fs.pipe_file(full, bytes(data))
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
