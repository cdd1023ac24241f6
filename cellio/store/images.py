"""The images array's metadata (images/zarr.json): (N, H, W, C) of the layout's pixel type (uint8, uint16), NHWC, in the chunked layout (one chunk per
site, format 1.1) or the sharded one (shards.py), every chunk checksummed; and which layout a store's metadata
describes (`image_layout`)."""
from __future__ import annotations

from typing import Any

from ..errors import StoreError
from .codecs import CRC32C, get_codec
from .shards import DEFAULT_SITES_PER_SHARD, ShardLayout, tile_shape

__all__ = ["LAYOUTS", "images_metadata", "image_layout"]

# image layouts: "chunked" = one chunk file per site (format 1.1); "sharded" = a shard file per group of sites, an
# inner chunk per tile of a site (Zarr v3 sharding_indexed), so a crop decodes only the tiles it overlaps
LAYOUTS: tuple[str, ...] = ("chunked", "sharded")


def images_metadata(n_sites: int, shape: tuple[int, int, int], codec: str, checksum: bool = True,
                    layout: str = "chunked", sites_per_shard: int = DEFAULT_SITES_PER_SHARD,
                    tile: tuple[int, int] | None = None, dtype: str = "uint8") -> dict[str, Any]:
    """images/zarr.json: `dtype` (N, H, W, C) for sites of `shape` (H, W, C), NHWC, crc32c-checksummed.

    layout "chunked": one site per chunk (format 1.1). "sharded": a shard of `sites_per_shard` sites per file,
    `sharding_indexed` with an inner chunk per (th, tw) tile of a site (index first, checksummed); the shard's
    spatial shape is H and W rounded up to whole tiles (edge tiles are padded with the fill value 0).
    """
    H, W, C = (int(v) for v in shape)
    if layout == "sharded":
        th, tw = tile_shape((H, W), tile)
        grid = [int(sites_per_shard), -(-H // th) * th, -(-W // tw) * tw, C]
        codecs = [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [1, th, tw, C], "codecs": get_codec(codec).pipeline(checksum, dtype),
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, dict(CRC32C)],
            "index_location": "start"}}]
    elif layout == "chunked":
        grid, codecs = [1, H, W, C], get_codec(codec).pipeline(checksum, dtype)
    else:
        raise StoreError(f"layout {layout!r} is unknown; expected one of {', '.join(LAYOUTS)}")
    return {"shape": [n_sites, H, W, C], "data_type": str(dtype),
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": grid}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0, "codecs": codecs, "attributes": {},
            "dimension_names": ["site", "y", "x", "channel"], "zarr_format": 3, "node_type": "array",
            "storage_transformers": []}


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
