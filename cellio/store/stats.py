"""The store's pixel statistics, written once: exact per-channel integer sums of a site (what `stats/sum` and
`stats/sumsq` hold; ingest writes them, verify checks chunks against them) and the per-channel mean and std of a
group of sites pooled exactly from them (`Store.channel_stats`)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["STATS_LEVELS", "channel_sums", "site_sums", "pooled_stats"]

_LIMB = np.uint64(32)

STATS_LEVELS: tuple[str, ...] = ("site", "plate", "experiment", "global")


def _square_type(dtype: np.dtype) -> type:
    """The narrowest unsigned type holding a pixel's square: 255**2 fits uint16, 65535**2 fits uint32."""
    return np.uint16 if np.dtype(dtype).itemsize == 1 else np.uint32


def channel_sums(planes: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Exact (sum, sum of squares) of each uint8 or uint16 plane, uint64 (C,) each. A uint16 site's sum of squares
    stays below 2**64 up to ~4e9 pixels (65535**2 per pixel), far beyond any site."""
    sums = np.array([p.sum(dtype=np.uint64) for p in planes], dtype=np.uint64)
    sumsq = np.array([np.square(p, dtype=_square_type(p.dtype)).sum(dtype=np.uint64) for p in planes],
                     dtype=np.uint64)
    return sums, sumsq


def site_sums(site: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`channel_sums` of an (H, W, C) uint8 or uint16 site (as ingest stores them)."""
    return channel_sums(np.ascontiguousarray(site.reshape(-1, site.shape[-1]).T))  # a plane per channel


def pooled_stats(sums: np.ndarray, sumsq: np.ndarray, codes: np.ndarray | None,
                 pixels: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std), float32 (n, C) each, every site getting its group's statistics.

    sums / sumsq: uint64 (n, C) per site; codes: int (n,) group of each site (None: each site its own group);
    pixels: pixels per site. Pooled exactly over the group's pixels: mean = S/n, std = sqrt(Q/n - mean^2).
    """
    if codes is None:
        gs, gq, count = sums.astype(np.float64), sumsq.astype(np.float64), np.ones(len(sums))
    else:
        ng = int(codes.max()) + 1 if len(codes) else 0
        tot_s, tot_q = _group_totals(sums, codes, ng), _group_totals(sumsq, codes, ng)
        cnt = np.bincount(codes, minlength=ng).astype(np.float64)
        gs, gq, count = tot_s[codes], tot_q[codes], cnt[codes]
    n = (count * pixels)[:, None]
    mean = gs / n
    std = np.sqrt(np.maximum(gq / n - mean * mean, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def _group_totals(values: np.ndarray, codes: np.ndarray, ng: int) -> np.ndarray:
    """Exact per-group totals of uint64 (n, C) per-site sums, as float64 (ng, C).

    A uint16 plate's sums of squares pass 2**64 (65535**2 x 1080**2 pixels x a few thousand sites), so each value
    is split into 32-bit halves accumulated apart (each total < 2**64 for any number of sites below 2**32) and
    joined once, in float64. Totals below 2**53 (all of RxRx1: ~2e15) come out exactly the integers."""
    values = np.asarray(values, dtype=np.uint64)
    lo = values & np.uint64(0xFFFFFFFF)
    hi = values >> _LIMB
    tot_lo = np.zeros((ng, values.shape[1]), dtype=np.uint64)
    tot_hi = np.zeros((ng, values.shape[1]), dtype=np.uint64)
    np.add.at(tot_lo, codes, lo)
    np.add.at(tot_hi, codes, hi)
    return tot_hi.astype(np.float64) * float(2 ** 32) + tot_lo.astype(np.float64)
