"""Local chunk files, one per site (the chunked layout): one `pread` of the rows a crop needs (uncompressed, no
verification), or the whole chunk read and decoded (compressed, or checksummed)."""
from __future__ import annotations

import os

import numpy as np

from ...errors import StoreDamagedError
from ..format import chunk_key
from .objects import WholeObjects, read_files
from .base import ReadPath, decode_chunk

__all__ = ["LocalChunks"]


class LocalChunks(ReadPath):
    mode = "local"

    def objects(self) -> WholeObjects:
        """Whole files, read in turn (a local disk gains nothing from more requests in flight)."""
        images = os.path.join(self.ctx.root, "images")

        def path(key: str) -> str:
            return os.path.join(images, *key.split("/"))

        return WholeObjects(self.ctx, lambda keys: read_files([path(k) for k in keys]), path)

    def chunk_path(self, pos: int) -> str:
        return os.path.join(self.ctx.root, "images", *chunk_key(self.ctx.meta, (pos, 0, 0, 0)).split("/"))

    def read_site(self, pos: int, crop: np.ndarray, dst: np.ndarray) -> None:
        ctx = self.ctx
        assert ctx.codec is not None
        H, W, C = ctx.image_shape
        y, x, h, w = (int(v) for v in crop)
        path = self.chunk_path(pos)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise StoreDamagedError(f"{path}: the chunk file is missing (expected one chunk per stored site); the "
                                    f"store is damaged", file=path) from None
        try:
            if ctx.codec.compressor is None and not (ctx.codec.checksum and ctx.verify):
                # rows y..y+h are one contiguous byte range of an NHWC chunk. Read them into a fresh bytes object,
                # then copy: measured ~2x faster than preadv straight into a large, cache-cold batch array
                # (the kernel's copy_to_user pays write-allocate on cold lines; numpy's large memcpy streams).
                row = W * C * ctx.dtype.itemsize  # bytes per row of the site
                want = h * row
                data = os.pread(fd, want, y * row)
                while len(data) < want:  # pread may return short on some file systems
                    more = os.pread(fd, want - len(data), y * row + len(data))
                    if not more:
                        raise StoreDamagedError(f"{path}: chunk is truncated (read {len(data)} of {want} bytes at "
                                                f"offset {y * row}; expected {H * row} bytes of pixels)", file=path)
                    data += more
                src = np.frombuffer(data, dtype=ctx.dtype).reshape(h, W, C)
                dst[...] = src if w == W else src[:, x:x + w]
            else:  # compressed, or checksummed: the whole chunk
                decode_chunk(ctx, os.read(fd, os.fstat(fd).st_size), path, crop, dst)
        finally:
            os.close(fd)
