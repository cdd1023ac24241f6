"""Free space: what the sites of an ingest take on disk (the codec's size estimate, checksums, journal and tables),
checked before the first byte is written, so a job that cannot fit stops before it starts."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DiskFullError
from ..store.codecs import get_codec
from ..store.files import FileTarget

__all__ = ["estimate_bytes", "check_space"]


def estimate_bytes(shape: Sequence[int], codec: str, n_sites: int, dtype: str = "uint8") -> int:
    """Bytes `n_sites` more sites of `shape` (H, W, C) of pixel type `dtype` take: chunks (the codec's size
    estimate of raw), checksums, journal, tables."""
    H, W, C = (int(v) for v in shape)
    raw = H * W * C * np.dtype(dtype).itemsize
    return int(n_sites * (raw * get_codec(codec).size_estimate + 4 + 512))


def check_space(target: FileTarget, shape: Sequence[int], codec: str, n_sites: int, dtype: str = "uint8") -> None:
    free = target.free_bytes()
    needed = estimate_bytes(shape, codec, n_sites, dtype)
    if free is not None and free < needed:
        raise DiskFullError(target.path, needed, free, what=f"writing {n_sites} sites ({codec}, estimated at "
                            f"{get_codec(codec).size_estimate}x of raw)",
                            hint="no site was written; free some space (or choose another path) and rerun")
