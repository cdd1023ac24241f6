"""Objects in object storage (S3, GCS, ... through fsspec or obstore), either layout: for a whole batch the
missing shard indexes, then every site's byte range, are fetched concurrently in one call each
(`cellio.store.remote`, with retries); the Store's threads then decode and checksum-verify them into the batch."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import StoreDamagedError
from ..format import chunk_key
from .base import ReadContext, ReadPath, decode_chunk
from .objects import WholeObjects

__all__ = ["RemoteObjects"]


class RemoteObjects(ReadPath):
    mode = "remote"

    def __init__(self, ctx: ReadContext, fetcher: Any, make_fetcher: Callable[[], Any]):
        super().__init__(ctx)
        self.fetcher = fetcher
        self._make_fetcher = make_fetcher           # a fresh client for a forked child
        self._indexes: dict[int, np.ndarray] = {}  # sharded layout: shard -> its decoded index (never changes)

    def after_fork(self) -> "RemoteObjects":
        """A fresh client: the parent's connections and event loop stay its own."""
        return RemoteObjects(self.ctx, self._make_fetcher(), self._make_fetcher)

    def objects(self) -> WholeObjects:
        """Whole objects through the same client (one GET each, retried; errors name the object)."""
        images = f"{self.ctx.root}/images"
        fetcher = self.fetcher
        return WholeObjects(self.ctx, lambda keys: fetcher.fetch([(f"{images}/{k}", 0, None) for k in keys]),
                            lambda k: fetcher.url(f"{images}/{k}"))

    def batch(self, pos: np.ndarray, crops: np.ndarray, out: np.ndarray) -> Callable[[int], None]:
        """Fetch every byte range the batch needs in one concurrent call (after the shard indexes it lacks, in
        another), and return the decoder the reader threads run for batch slot b: decode(b) -> None into out[b]
        (slots, not sites: a batch may read one site twice with different crops)."""
        ctx, fetcher = self.ctx, self.fetcher
        H, W, C = ctx.image_shape
        row = W * C * ctx.dtype.itemsize  # bytes per row of a site
        images = f"{ctx.root}/images"
        requests: list[tuple[str, int, int | None]] = []
        lay = ctx.shards
        if lay is not None:
            need = sorted({lay.locate(int(p))[0] for p in pos} - set(self._indexes))
            if need:
                keys = [f"{images}/{lay.shard_key(s)}" for s in need]
                got = fetcher.fetch([(key, 0, lay.index_nbytes) for key in keys])
                for s, key, data in zip(need, keys, got):
                    url = fetcher.url(key)
                    if data is None:
                        raise ctx.name_site(StoreDamagedError(
                            f"{url}: the shard object is missing (expected one per {lay.sites} sites); the store "
                            f"is damaged", file=url), int(next(p for p in pos if lay.locate(int(p))[0] == s)))
                    self._indexes[s] = lay.decode_index(data, file=url)
        plans: list[tuple[int, Any]] = []
        assert ctx.codec is not None
        for p, crop in zip(pos.tolist(), crops):
            y, x, h, w = (int(v) for v in crop)
            if lay is not None:
                shard, k = lay.locate(p)
                key = f"{images}/{lay.shard_key(shard)}"
                entries = self._indexes[shard][k]
                tiles = lay.tile_range(y, x, h, w)
                try:
                    start, end = lay.site_span(entries, tiles, file=fetcher.url(key))
                except StoreDamagedError as exc:
                    raise ctx.name_site(exc, p) from None
                requests.append((key, start, end))
                plans.append((start, (entries, tiles)))
            else:
                key = f"{images}/{chunk_key(ctx.meta, (p, 0, 0, 0))}"
                if ctx.codec.compressor is None and not (ctx.codec.checksum and ctx.verify) \
                        and h < H:  # an uncompressed crop without verification: only its rows
                    requests.append((key, y * row, (y + h) * row))
                    plans.append((y, None))
                else:
                    requests.append((key, 0, None))
                    plans.append((-1, None))
        fetched = list(zip(fetcher.fetch(requests), (r[0] for r in requests), plans))

        def decode(b: int) -> None:
            data, key, (first, extra) = fetched[b]
            crop, dst = crops[b], out[b]
            url = fetcher.url(key)
            if data is None:
                raise StoreDamagedError(f"{url}: the {'shard' if lay else 'chunk'} object is missing (expected one "
                                        f"per {'%d sites' % lay.sites if lay else 'stored site'}); the store is "
                                        f"damaged", file=url)
            y, x, h, w = (int(v) for v in crop)
            if lay is not None:
                entries, tiles = extra
                lay.decode_site(data, first, entries, tiles, (y, x, h, w), dst,
                                ctx.scratch(lay.tile_nbytes), file=url, verify=ctx.verify)
            elif first >= 0:  # rows y..y+h of an uncompressed chunk
                if len(data) != h * row:
                    raise StoreDamagedError(f"{url}: chunk is truncated (got {len(data)} of {h * row} bytes at "
                                            f"offset {y * row})", file=url)
                src = np.frombuffer(data, dtype=ctx.dtype).reshape(h, W, C)
                dst[...] = src if w == W else src[:, x:x + w]
            else:
                decode_chunk(ctx, data, url, crop, dst)

        return decode
