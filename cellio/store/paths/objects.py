"""Whole objects of a store, for streaming: the loader's stream mode (cellio/loading/streaming.py) reads a store
one *unit* at a time, a unit being the objects it fetches whole in one concurrent call, then decodes any of the
unit's sites from those bytes.

- sharded layout: a unit is one shard object (index + every tile of its sites): one GET;
- chunked layout: a unit is `CHUNKED_UNIT_SITES` consecutive chunk objects, fetched concurrently.

Checksums are verified exactly as on the random read path (the shard index always, every chunk's crc32c when
`verify`); a missing object is damage, raised with its URL when one of its sites is decoded (never zeros).
`WholeObjects.get` is the read path's: `RemoteObjects` fetches through its range client (retries, errors naming
the object), the local paths read files.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import StoreDamagedError
from ..format import chunk_key
from .base import ReadContext, decode_chunk

__all__ = ["CHUNKED_UNIT_SITES", "FetchedUnit", "WholeObjects", "read_files"]

CHUNKED_UNIT_SITES = 32  # chunked layout: sites per unit (the sharded layout's default shard size)


@dataclass
class FetchedUnit:
    """The bytes of one unit: `data[k]` is object k (sharded: the one shard; chunked: the chunk of site first + k),
    None where it does not exist; `urls[k]` names it in errors."""

    unit: int
    first: int
    data: list[Any]
    urls: list[str]
    index: np.ndarray | None = field(default=None, repr=False)  # sharded: the decoded shard index

    @property
    def nbytes(self) -> int:
        return sum(len(d) for d in self.data if d is not None)


class WholeObjects:
    """Unit numbers, whole-object fetches and decoding from fetched bytes for one store (see the module docstring).

    get(keys) -> one buffer (or None: no such object) per key, keys relative to the images array;
    url(key) -> the name of that object in messages."""

    def __init__(self, ctx: ReadContext, get: Callable[[list[str]], Sequence[Any]], url: Callable[[str], str]):
        assert ctx.codec is not None
        self.ctx = ctx
        self._get = get
        self._url = url
        self.sites_per_unit = ctx.shards.sites if ctx.shards is not None else CHUNKED_UNIT_SITES

    def unit_of(self, pos: np.ndarray) -> np.ndarray:
        """The unit of each array position."""
        return np.asarray(pos, dtype=np.int64) // self.sites_per_unit

    def _keys(self, unit: int, n_all: int) -> tuple[int, list[str]]:
        lay = self.ctx.shards
        first = unit * self.sites_per_unit
        if lay is not None:
            return first, [lay.shard_key(unit)]
        last = min(first + self.sites_per_unit, n_all)
        return first, [chunk_key(self.ctx.meta, (p, 0, 0, 0)) for p in range(first, last)]

    def fetch(self, units: Sequence[int]) -> dict[int, FetchedUnit]:
        """Every object of `units`, whole, in one concurrent call."""
        n_all = int(self.ctx.meta["shape"][0])
        plans = [(int(u), *self._keys(int(u), n_all)) for u in units]
        keys = [k for _, _, ks in plans for k in ks]
        got = list(self._get(keys)) if keys else []
        out: dict[int, FetchedUnit] = {}
        i = 0
        for unit, first, ks in plans:
            out[unit] = FetchedUnit(unit, first, got[i:i + len(ks)], [self._url(k) for k in ks])
            i += len(ks)
        return out

    def decode(self, fetched: FetchedUnit, pos: int, crop: np.ndarray, dst: np.ndarray) -> None:
        """The crop (y, x, h, w) of array position `pos` (a site of `fetched`) into dst."""
        ctx, lay = self.ctx, self.ctx.shards
        y, x, h, w = (int(v) for v in crop)
        if lay is None:
            k = pos - fetched.first
            data, url = fetched.data[k], fetched.urls[k]
            if data is None:
                raise StoreDamagedError(f"{url}: the chunk object is missing (expected one per stored site); the "
                                        f"store is damaged", file=url)
            decode_chunk(ctx, data, url, crop, dst)
            return
        data, url = fetched.data[0], fetched.urls[0]
        if data is None:
            raise StoreDamagedError(f"{url}: the shard object is missing (expected one per {lay.sites} sites); the "
                                    f"store is damaged", file=url)
        if fetched.index is None:  # one decode per unit; two threads may both decode it and agree
            fetched.index = lay.decode_index(memoryview(data)[:lay.index_nbytes], file=url)
        entries = fetched.index[pos - fetched.first]
        tiles = lay.tile_range(y, x, h, w)
        start, end = lay.site_span(entries, tiles, file=url)
        if end > len(data):
            raise StoreDamagedError(f"{url}: the shard is truncated ({len(data)} bytes, its index points to byte "
                                    f"{end})", file=url)
        lay.decode_site(data, 0, entries, tiles, (y, x, h, w), dst,
                        ctx.scratch(lay.tile[0] * lay.tile[1] * lay.image[2]), file=url, verify=ctx.verify)


def read_files(paths: list[str]) -> list[bytes | None]:
    """Whole local files (None for a missing one): the local read paths' `WholeObjects.get`."""
    out: list[bytes | None] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                out.append(f.read())
        except FileNotFoundError:
            out.append(None)
    return out
