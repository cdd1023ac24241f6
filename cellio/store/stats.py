"""The store's pixel statistics, written once: exact per-channel integer sums of a site (what `stats/sum` and
`stats/sumsq` hold; ingest writes them, verify checks chunks against them) and the per-channel mean and std of a
group of sites pooled exactly from them (`Store.channel_stats`)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["STATS_LEVELS", "channel_sums", "site_sums", "pooled_stats"]

STATS_LEVELS: tuple[str, ...] = ("site", "plate", "experiment", "global")


def channel_sums(planes: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Exact (sum, sum of squares) of each uint8 plane, uint64 (C,) each (255**2 fits uint16, totals uint64)."""
    sums = np.array([p.sum(dtype=np.uint64) for p in planes], dtype=np.uint64)
    sumsq = np.array([np.square(p, dtype=np.uint16).sum(dtype=np.uint64) for p in planes], dtype=np.uint64)
    return sums, sumsq


def site_sums(site: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`channel_sums` of an (H, W, C) uint8 site (as ingest stores them)."""
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
        # integer accumulation keeps the pooled sums exact (max ~2e15 over all of RxRx1 < 2**53)
        tot_s = np.zeros((ng, sums.shape[1]), dtype=np.uint64)
        tot_q = np.zeros((ng, sums.shape[1]), dtype=np.uint64)
        np.add.at(tot_s, codes, sums)
        np.add.at(tot_q, codes, sumsq)
        cnt = np.bincount(codes, minlength=ng).astype(np.float64)
        gs, gq, count = tot_s[codes].astype(np.float64), tot_q[codes].astype(np.float64), cnt[codes]
    n = (count * pixels)[:, None]
    mean = gs / n
    std = np.sqrt(np.maximum(gq / n - mean * mean, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)
