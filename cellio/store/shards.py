"""The sharded image layout (docs/data_format.md, "sharded"): a shard file per group of sites, an inner chunk per
tile of a site (Zarr v3 `sharding_indexed`, index first), so a crop decodes only the tiles it overlaps.
`ShardLayout` computes shard keys and the index, which tiles a crop needs and where they lie, and encodes and
decodes a site's tiles."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import StoreDamagedError, StoreError
from .codecs import CRC32C, ChunkCodec, chunk_codec, crc32c
from .format import chunk_key

__all__ = ["DEFAULT_SITES_PER_SHARD", "DEFAULT_TILE", "tile_shape", "ShardLayout", "shard_layout"]

DEFAULT_SITES_PER_SHARD = 32
DEFAULT_TILE = 128
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

    @property
    def dtype(self) -> np.dtype:
        """The pixel type of the images array (uint8, uint16)."""
        return np.dtype(self.meta.get("data_type", "uint8"))

    @property
    def tile_nbytes(self) -> int:
        """Bytes of one decoded tile (the scratch buffer `decode_site` needs)."""
        return self.tile[0] * self.tile[1] * self.image[2] * self.dtype.itemsize

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
                                               dict(CRC32C)]
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
        crop (y, x, h, w) of the site into dst (h, w, C). scratch: a uint8 buffer of at least `tile_nbytes`."""
        th, tw = self.tile
        C = self.image[2]
        y, x, h, w = crop
        mv = memoryview(data).cast("B")
        r0, r1, c0, c1 = tiles
        tile_buf = scratch[:self.tile_nbytes].view(self.dtype).reshape(th, tw, C)
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
        """One (H, W, C) site of the array's pixel type -> its encoded tiles in C order (edge tiles padded with
        zeros)."""
        th, tw = self.tile
        ty, tx = self.tiles
        H, W, C = self.image
        if (ty * th, tx * tw) != (H, W):
            pad = np.zeros((ty * th, tx * tw, C), dtype=self.dtype)
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
        """A whole shard file: `sites` maps site-within-shard -> (H, W, C) pixels; absent sites are not stored."""
        return self.assemble({k: self.encode_tiles(v) for k, v in sites.items()})


def shard_layout(meta: dict[str, Any]) -> ShardLayout:
    """The ShardLayout of a sharded images/zarr.json (StoreError if it is not cellio's sharded layout)."""
    return ShardLayout.from_metadata(meta)
