"""What every read path of a store shares: the `ReadContext` the Store hands it, the `ReadPath` interface the
Store's `read` calls, and decoding one whole chunk into a crop (`decode_chunk`)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import StoreDamagedError, StoreError
from ..codecs import ChunkCodec
from ..shards import ShardLayout

__all__ = ["ReadContext", "ReadPath", "decode_chunk"]


@dataclass(frozen=True)
class ReadContext:
    """path: the store's path or URL (for messages); root: its root without the protocol; meta:
    images/zarr.json; image_shape: (H, W, C); dtype: the pixel type (uint8, uint16); codec / shards: the chunk codec and, for the sharded layout, the
    ShardLayout; verify: check crc32c on read; scratch(n): a reusable n-byte buffer of the calling thread;
    name_site(exc, pos): `exc` with the id_code and site of array position `pos` added."""

    path: str
    root: str
    meta: dict[str, Any]
    image_shape: tuple[int, int, int]
    dtype: np.dtype
    codec: ChunkCodec | None
    shards: ShardLayout | None
    verify: bool
    scratch: Callable[[int], np.ndarray]
    name_site: Callable[[StoreDamagedError, int], StoreDamagedError]


class ReadPath:
    """One way a store's sites get from storage into a batch. `mode` names it ("local", "sharded", "remote",
    "zarr"); `batch(pos, crops, out)` prepares a batch and returns `site(b)`, which fills out[b] with the crop
    crops[b] of array position pos[b] (the Store runs `site` on its threads); `after_fork()` is the path a forked
    child uses (fresh clients and handles where the parent's must not be shared)."""

    mode = ""

    def __init__(self, ctx: ReadContext):
        self.ctx = ctx

    def batch(self, pos: np.ndarray, crops: np.ndarray, out: np.ndarray) -> Callable[[int], None]:
        def site(b: int) -> None:
            self.read_site(int(pos[b]), crops[b], out[b])

        return site

    def read_site(self, pos: int, crop: np.ndarray, dst: np.ndarray) -> None:
        raise TypeError(f"{type(self).__name__} reads whole batches only")

    def after_fork(self) -> "ReadPath":
        return self

    def objects(self) -> Any:
        """The store's whole objects for streaming (`cellio.store.paths.objects.WholeObjects`); a read path that
        cannot say which objects hold which sites raises StoreError."""
        raise StoreError(f"{self.ctx.path}: its images are not in a cellio layout (chunked or sharded), so they "
                         f"cannot be read as whole objects; read them with read_mode='random'")


def decode_chunk(ctx: ReadContext, data: Any, path: str, crop: np.ndarray, dst: np.ndarray) -> None:
    """A whole chunk's bytes -> the crop of it in dst (checksum verified when ctx.verify)."""
    assert ctx.codec is not None
    H, W, C = ctx.image_shape
    y, x, h, w = (int(v) for v in crop)
    if h == H and w == W:
        ctx.codec.decode(data, dst, file=path, verify=ctx.verify)
    else:
        tmp = ctx.scratch(H * W * C * ctx.dtype.itemsize).view(ctx.dtype)
        ctx.codec.decode(data, tmp, file=path, verify=ctx.verify)
        dst[...] = tmp.reshape(H, W, C)[y:y + h, x:x + w]
