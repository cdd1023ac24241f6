"""Chunk codecs of a cellio store: the registered choices of the `codec` attribute, their Zarr v3 metadata, and
`ChunkCodec`, which encodes, checks (crc32c) and decodes one chunk's bytes.

As in zarr-python's codec registry (`zarr.registry.register_codec`), a codec is an object registered under its
name, and everything that needs one asks the registry: the ingest's `--codec` choices (`list_codecs`), the image
array metadata (`ImageCodec.pipeline`), the free-space estimate (`ImageCodec.size_estimate`) and the decoder of a
pipeline read back from a store (`chunk_codec`, through the compressor's Zarr name). A new codec is one
`register_codec` call at the end of this module (docs/architecture.md).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ChecksumError, MissingDependencyError, StoreDamagedError, StoreError

__all__ = ["CRC32C", "ImageCodec", "register_codec", "get_codec", "list_codecs", "ChunkCodec", "chunk_codec",
           "crc32c"]

# Zarr v3's bytes -> bytes checksum codec: ends every pipeline cellio writes (format 1.1)
CRC32C: dict[str, Any] = {"name": "crc32c"}


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


@dataclass(frozen=True)
class ImageCodec:
    """One choice of a store's `codec` (`cellio ingest --codec NAME`).

    name: the `codec` attribute; compressor: the Zarr v3 codec between "bytes" and "crc32c" in the images array's
    pipeline (None: the raw bytes); build: the numcodecs codec for a configuration of that compressor (any
    configuration, so a store another tool wrote with other settings still decodes); size_estimate: stored bytes
    per raw byte, assumed by the free-space check before an ingest (measured, docs/performance.md); why: one line
    for `--help` and the docs.
    """

    name: str
    compressor: dict[str, Any] | None
    build: Callable[[dict[str, Any]], Any] | None
    size_estimate: float
    why: str

    def pipeline(self, checksum: bool = True, dtype: str = "uint8") -> list[dict[str, Any]]:
        """The Zarr v3 `codecs` list of an array in this codec (what ingest writes into images/zarr.json).

        checksum: end the pipeline with Zarr v3's `crc32c` codec (bytes -> bytes, a 4-byte little-endian CRC-32C
        of the encoded chunk appended), which every v3 client verifies on read. Format >= 1.1 always writes it.
        dtype: the array's pixel type. A multi-byte type gets the `bytes` codec's little-endian configuration (Zarr
        v3 requires one) and a compressor's `typesize` its item size, so blosc shuffles whole pixels; uint8 keeps
        the pipeline of every earlier store.
        """
        itemsize = np.dtype(dtype).itemsize
        codecs: list[dict[str, Any]] = [{"name": "bytes"} if itemsize == 1 else
                                        {"name": "bytes", "configuration": {"endian": "little"}}]
        if self.compressor is not None:
            compressor = copy.deepcopy(self.compressor)
            if "typesize" in compressor.get("configuration", {}):
                compressor["configuration"]["typesize"] = itemsize
            codecs.append(compressor)
        return codecs + [dict(CRC32C)] if checksum else codecs


_CODECS: dict[str, ImageCodec] = {}


def register_codec(codec: ImageCodec) -> None:
    """Make `codec` a choice of `codec` (StoreError if its name is taken)."""
    if codec.name in _CODECS:
        raise StoreError(f"codec {codec.name!r} is already registered")
    _CODECS[codec.name] = codec


def list_codecs() -> tuple[str, ...]:
    """The registered codec names, in registration order (the default first)."""
    return tuple(_CODECS)


def get_codec(name: str) -> ImageCodec:
    try:
        return _CODECS[name]
    except KeyError:
        raise StoreError(f"codec {name!r} is unknown; expected one of {', '.join(_CODECS)}") from None


def _compressor(name: str) -> Callable[[dict[str, Any]], Any]:
    """The numcodecs builder of the Zarr v3 compressor `name` ("blosc", "zstd"), from the registered codecs."""
    for codec in _CODECS.values():
        if codec.compressor is not None and codec.compressor["name"] == name and codec.build is not None:
            return codec.build
    raise StoreError(f"codec {name!r} is not handled by the fast path")


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
        """Decode one whole chunk into `out` (C-contiguous, exactly the chunk's size, of the array's pixel type:
        the bytes are little-endian, as cellio writes them on every platform it runs on)."""
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
    """The ChunkCodec of a `bytes [+ compressor] [+ crc32c]` pipeline (a registered codec's compressor).

    Raises StoreError for pipelines the fast path does not handle (the caller then falls back to zarr-python).
    """
    if not codecs or codecs[0].get("name") != "bytes":
        raise StoreError(f"codec pipeline {codecs} does not start with 'bytes'")
    if codecs[0].get("configuration", {}).get("endian", "little") != "little":
        raise StoreError(f"codec pipeline {codecs} stores big-endian pixels (the fast path reads little-endian)")
    rest = list(codecs[1:])
    checksum = bool(rest) and rest[-1].get("name") == "crc32c"
    if checksum:
        rest = rest[:-1]
    if not rest:
        return ChunkCodec(None, checksum)
    if len(rest) > 1:
        raise StoreError(f"codec pipeline {codecs} has more than one compressor")
    return ChunkCodec(_compressor(rest[0]["name"])(rest[0].get("configuration", {})), checksum)


def _blosc(cfg: dict[str, Any]) -> Any:
    import numcodecs

    shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
               "bitshuffle": numcodecs.Blosc.BITSHUFFLE}[cfg.get("shuffle", "noshuffle")]
    return numcodecs.Blosc(cname=cfg.get("cname", "lz4"), clevel=int(cfg.get("clevel", 5)), shuffle=shuffle,
                           blocksize=int(cfg.get("blocksize", 0)))


def _zstd(cfg: dict[str, Any]) -> Any:
    import numcodecs

    if cfg.get("checksum"):
        raise StoreError("zstd with checksum is not handled by the fast path")
    return numcodecs.Zstd(level=int(cfg.get("level", 0)))


# ---------------------------------------------------------------------------------------------- the codecs
register_codec(ImageCodec("none", None, None, 1.0, "raw bytes: the fastest reads where storage is fast"))
# bitshuffle groups the mostly-zero high bits of dim cell images (~0.54x vs ~0.66x of raw without it); clevel 1
# encodes ~2.5x faster than 5 for ~2% more bytes (docs/performance.md)
register_codec(ImageCodec("lz4", {"name": "blosc", "configuration": {
    "typesize": 1, "cname": "lz4", "clevel": 1, "shuffle": "bitshuffle", "blocksize": 0}}, _blosc, 0.6,
    "blosc-lz4 + bitshuffle: ~0.6x of raw, decodes several times faster than zstd (the default)"))
register_codec(ImageCodec("zstd", {"name": "zstd", "configuration": {"level": 1, "checksum": False}}, _zstd, 0.6,
                          "zstd level 1: about lz4's size, slower to decode"))
