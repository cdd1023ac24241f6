"""Local shard files (the sharded layout): each shard's index read once and cached (shards are written whole,
never edited in place), then the tiles a crop overlaps read as one byte range and only those decoded."""
from __future__ import annotations

import os

import numpy as np

from ...errors import StoreDamagedError
from .objects import WholeObjects, read_files
from .base import ReadContext, ReadPath

__all__ = ["LocalShards"]


class LocalShards(ReadPath):
    mode = "sharded"

    def objects(self) -> WholeObjects:
        """Whole files, read in turn (a local disk gains nothing from more requests in flight)."""
        images = os.path.join(self.ctx.root, "images")

        def path(key: str) -> str:
            return os.path.join(images, *key.split("/"))

        return WholeObjects(self.ctx, lambda keys: read_files([path(k) for k in keys]), path)

    def __init__(self, ctx: ReadContext):
        super().__init__(ctx)
        assert ctx.shards is not None
        self.shards = ctx.shards
        self._indexes: dict[int, np.ndarray] = {}  # shard -> its decoded index (never changes)

    def shard_file(self, shard: int) -> str:
        return os.path.join(self.ctx.root, "images", *self.shards.shard_key(shard).split("/"))

    def index(self, shard: int) -> np.ndarray:
        """The decoded index of a local shard (read once)."""
        got = self._indexes.get(shard)
        if got is None:
            path = self.shard_file(shard)
            try:
                with open(path, "rb") as f:
                    data = f.read(self.shards.index_nbytes)
            except FileNotFoundError:
                raise StoreDamagedError(f"{path}: the shard file is missing (expected one per "
                                        f"{self.shards.sites} sites); the store is damaged", file=path) from None
            got = self.shards.decode_index(data, file=path)
            self._indexes[shard] = got  # a dict assignment is atomic: two threads may both read, both agree
        return got

    def read_site(self, pos: int, crop: np.ndarray, dst: np.ndarray) -> None:
        lay = self.shards
        shard, k = lay.locate(pos)
        entries = self.index(shard)[k]
        y, x, h, w = (int(v) for v in crop)
        path = self.shard_file(shard)
        tiles = lay.tile_range(y, x, h, w)
        start, end = lay.site_span(entries, tiles, file=path)
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, end - start, start)
        finally:
            os.close(fd)
        if len(data) != end - start:
            raise StoreDamagedError(f"{path}: the shard is truncated (read {len(data)} of {end - start} bytes at "
                                    f"offset {start})", file=path)
        lay.decode_site(data, start, entries, tiles, (y, x, h, w), dst,
                        self.ctx.scratch(lay.tile_nbytes), file=path, verify=self.ctx.verify)
