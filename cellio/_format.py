"""The cellio store format: how a store lays out its bytes (normative spec: docs/data_format.md).

One home for everything the write path (`cellio/ingestion.py`) and the read path (`cellio/store.py`) must agree
on, so neither imports the other:

- names and versions: `FORMAT_NAME`, `FORMAT_VERSION`, the `status` codes, the ingest-state files
  (`CREATING_MARKER`, `JOURNAL_DIR`, `TMP_DIR`);
- array metadata: the image codecs (`codec_metadata`, `numcodec_from_metadata`), `images_metadata`,
  `chunk_key`;
- small one-chunk arrays (the site table, `status`, `stats/*`): `small_array_files`, `read_small_array`;
- site-table columns: logical dtypes and their encoding (`column_kind`, `encode_column`, `decode_column`);
- the ingest journal: `journal_key`, `read_journal`;
- where bytes go: `is_url`, `get_fs`, and `FileTarget`, the one place a store file is written.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from typing import Any

import numpy as np
import pandas as pd

from .errors import StoreError
from .schema import N_CHANNELS

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "CODECS", "STATUS_MISSING", "STATUS_OK", "STATUS_FAILED",
    "JOURNAL_DIR", "CREATING_MARKER", "TMP_DIR",
    "codec_metadata", "numcodec_from_metadata", "images_metadata", "group_metadata", "chunk_key",
    "small_array_files", "read_small_array", "read_json",
    "column_kind", "encode_column", "decode_column", "encode_strings", "decode_strings",
    "journal_key", "read_journal", "is_url", "get_fs", "FileTarget",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "cellio-rxrx1"
FORMAT_VERSION = "1.0"
CODECS: tuple[str, ...] = ("none", "lz4", "zstd")

# status array values
STATUS_MISSING, STATUS_OK, STATUS_FAILED = 0, 1, 2

JOURNAL_DIR = ".cellio-journal"      # per-batch completion records while an ingest is unfinished
CREATING_MARKER = ".cellio-creating"  # present only while the store skeleton is being written
TMP_DIR = ".cellio-tmp"              # files being written, renamed into place when whole


# ----------------------------------------------------------------------------------------------- array metadata
def codec_metadata(codec: str) -> list[dict[str, Any]]:
    """The Zarr v3 `codecs` list for one of CODECS (what ingest writes into images/zarr.json)."""
    if codec == "none":
        return [{"name": "bytes"}]
    if codec == "lz4":
        # bitshuffle groups the mostly-zero high bits of dim cell images (~0.54x vs ~0.66x of raw without it);
        # clevel 1 encodes ~2.5x faster than 5 for ~2% more bytes (docs/performance.md)
        return [{"name": "bytes"}, {"name": "blosc", "configuration": {
            "typesize": 1, "cname": "lz4", "clevel": 1, "shuffle": "bitshuffle", "blocksize": 0}}]
    if codec == "zstd":
        return [{"name": "bytes"}, {"name": "zstd", "configuration": {"level": 1, "checksum": False}}]
    raise StoreError(f"codec {codec!r} is unknown; expected one of {', '.join(CODECS)}")


def numcodec_from_metadata(codecs: list[dict[str, Any]]) -> Any | None:
    """numcodecs object that encodes/decodes a chunk for a `bytes [+ blosc|zstd]` pipeline; None if uncompressed.

    Raises StoreError for pipelines the fast path does not handle (the caller then falls back to zarr-python).
    """
    import numcodecs

    if not codecs or codecs[0].get("name") != "bytes":
        raise StoreError(f"codec pipeline {codecs} does not start with 'bytes'")
    rest = codecs[1:]
    if not rest:
        return None
    if len(rest) > 1:
        raise StoreError(f"codec pipeline {codecs} has more than one bytes->bytes codec")
    name, cfg = rest[0]["name"], rest[0].get("configuration", {})
    if name == "blosc":
        shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
                   "bitshuffle": numcodecs.Blosc.BITSHUFFLE}[cfg.get("shuffle", "noshuffle")]
        return numcodecs.Blosc(cname=cfg.get("cname", "lz4"), clevel=int(cfg.get("clevel", 5)), shuffle=shuffle,
                               blocksize=int(cfg.get("blocksize", 0)))
    if name == "zstd":
        if cfg.get("checksum"):
            raise StoreError("zstd with checksum is not handled by the fast path")
        return numcodecs.Zstd(level=int(cfg.get("level", 0)))
    raise StoreError(f"codec {name!r} is not handled by the fast path")


def images_metadata(n_sites: int, shape: tuple[int, int], codec: str) -> dict[str, Any]:
    """images/zarr.json: uint8 (N, H, W, 6), one site per chunk, NHWC."""
    H, W = shape
    return {"shape": [n_sites, H, W, N_CHANNELS], "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, H, W, N_CHANNELS]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0, "codecs": codec_metadata(codec), "attributes": {},
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
                                        {"name": "zstd", "configuration": {"level": 0, "checksum": False}}]


def small_array_files(data: np.ndarray, attributes: dict[str, Any] | None = None) -> dict[str, bytes]:
    """zarr.json + the single chunk of a one-chunk Zarr v3 array (bytes + zstd), as {relative key: bytes}.

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
            "fill_value": fill, "codecs": _SMALL_CODECS, "attributes": attributes or {}, "zarr_format": 3,
            "node_type": "array", "storage_transformers": []}
    files = {"zarr.json": json.dumps(meta, indent=2).encode()}
    if data.size:
        files[chunk_key(meta, tuple(0 for _ in data.shape))] = bytes(numcodecs.Zstd(level=0).encode(data))
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
        raise StoreError(f"{path} is not valid JSON ({exc}); the store is damaged") from None


def read_small_array(fs: Any, path: str, storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """Read a whole array written by `small_array_files`; anything else (rechunked, other codecs) via zarr."""
    import numcodecs

    meta = read_json(fs, f"{path}/zarr.json")
    shape = tuple(meta["shape"])
    if meta.get("codecs") == _SMALL_CODECS and \
            tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]) == tuple(max(1, d) for d in shape) and \
            meta.get("chunk_key_encoding", {}).get("name") == "default":
        dtype = np.dtype("bool" if meta["data_type"] == "bool" else meta["data_type"]).newbyteorder("<")
        if not all(shape):
            return np.zeros(shape, dtype=dtype)
        try:
            with fs.open(f"{path}/" + chunk_key(meta, tuple(0 for _ in shape)), "rb") as f:
                raw = numcodecs.Zstd().decode(f.read())
        except FileNotFoundError:
            return np.full(shape, meta["fill_value"], dtype=dtype)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    import zarr

    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols:
        return zarr.open_array(path, mode="r")[...]
    return zarr.open_array(fs.unstrip_protocol(path), mode="r", storage_options=storage_options or None)[...]


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


class FileTarget:
    """Writes into a store root: atomic temp+rename on local disks, whole-object puts on fsspec URLs."""

    def __init__(self, path: str, storage_options: dict[str, Any] | None):
        self.path = path
        self.storage_options = storage_options or {}
        self.fs, self.root = get_fs(path, storage_options)
        self.local = not is_url(path)

    def key(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.key(rel))

    def write(self, rel: str, data: bytes | memoryview) -> None:
        full = self.key(rel)
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

    def write_json(self, rel: str, obj: Any) -> None:
        self.write(rel, json.dumps(obj, indent=2).encode())

    def write_small_array(self, rel: str, data: np.ndarray) -> None:
        """A whole one-chunk array (see `small_array_files`) under `rel`."""
        for key, blob in small_array_files(data).items():
            self.write(f"{rel}/{key}", blob)

    def remove(self, rel: str, recursive: bool = False) -> None:
        full = self.key(rel)
        if self.local:
            if os.path.isdir(full):
                shutil.rmtree(full)
            elif os.path.exists(full):
                os.remove(full)
        elif self.fs.exists(full):
            self.fs.rm(full, recursive=recursive)
