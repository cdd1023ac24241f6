"""The store's small arrays (the site table `sites/*`, `status`, `stats/*`): each one Zarr v3 array in a single
chunk (bytes + zstd + crc32c), written and read directly, without zarr-python's import and per-call costs, while
staying plain Zarr v3 (tests read them back with zarr-python and tensorstore); anything else (rechunked, other
codecs) is read through zarr-python after checking that every chunk file exists."""
from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np

from ..errors import StoreDamagedError
from .codecs import CRC32C, ChunkCodec
from .format import chunk_key, read_json

__all__ = ["small_array_files", "read_small_array"]

_SMALL_CODECS: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "little"}},
                                        {"name": "zstd", "configuration": {"level": 0, "checksum": False}},
                                        dict(CRC32C)]

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
