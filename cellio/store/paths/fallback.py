"""Anything that is not a cellio layout (a store rechunked or sharded by another tool): zarr-python reads it, one
site per call on the Store's threads (never fancy indexing)."""
from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from ...errors import StoreDamagedError
from ..files import is_url
from .base import ReadContext, ReadPath

__all__ = ["ZarrFallback"]


class ZarrFallback(ReadPath):
    mode = "zarr"

    def __init__(self, ctx: ReadContext, storage_options: dict[str, Any]):
        super().__init__(ctx)
        self._storage_options = storage_options
        self._lock = threading.Lock()
        self._images: Any = None

    def after_fork(self) -> "ZarrFallback":
        return ZarrFallback(self.ctx, self._storage_options)  # a child must not reuse the parent's zarr handles

    def read_site(self, pos: int, crop: np.ndarray, dst: np.ndarray) -> None:
        """zarr-python verifies a crc32c codec itself (it cannot be turned off) and raises its own error; a chunk
        missing inside a shard would read as zeros (shard files are checked by `cellio verify`)."""
        if self._images is None:
            import zarr

            with self._lock:
                if self._images is None:
                    url = self.ctx.path.rstrip("/") + "/images"
                    self._images = zarr.open_array(url, mode="r", storage_options=self._storage_options or None) \
                        if is_url(url) else zarr.open_array(os.path.join(self.ctx.root, "images"), mode="r")
        y, x, h, w = (int(v) for v in crop)
        try:
            dst[...] = self._images[pos, y:y + h, x:x + w, :]
        except (RuntimeError, ValueError) as exc:  # crc32c mismatch or undecodable chunk, in zarr's words
            raise StoreDamagedError(f"{self.ctx.path}/images: zarr-python cannot read the chunk of site {pos} "
                                    f"({type(exc).__name__}: {exc})", file=f"{self.ctx.path}/images") from None
