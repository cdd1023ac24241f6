"""Tiny synthetic RxRx1 sets and stores for tests (ours and yours), built with cellio's own writer.

    raw = make_raw(tmp_path / "raw")                 # Kaggle layout, odd 17x11 images by default
    store = make_store(tmp_path / "store.zarr", raw) # ingested with cellio.ingest, opened read-only

Odd, non-square sizes make height/width mix-ups fail loudly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["make_raw", "make_store", "TINY_SIZE"]

TINY_SIZE = (17, 11)  # (height, width)


def make_raw(root: str | Path, *, classes: int = 8, train_experiments_per_cell_type: int = 1,
             test_experiments_per_cell_type: int = 1, size: tuple[int, int] = TINY_SIZE,
             positive_controls: int = 2, seed: int = 0, **kwargs: Any) -> Path:
    """Write a tiny RxRx1-layout data set under `root` and return its path."""
    from . import synthesize  # the public API: RxRx1's synthetic generator

    root = Path(root)
    synthesize(root, classes=classes, train_experiments_per_cell_type=train_experiments_per_cell_type,
               test_experiments_per_cell_type=test_experiments_per_cell_type, size=size,
               positive_controls=positive_controls, seed=seed, workers=1, progress=False, **kwargs)
    return root


def make_store(path: str | Path, raw: str | Path | None = None, *, codec: str = "none", **synth_kwargs: Any):
    """Ingest `raw` (or a fresh make_raw beside `path`) into a store at `path`; return it opened read-only."""
    from .ingestion import ingest
    from .store import open_store

    path = Path(path)
    if raw is None:
        raw = make_raw(path.with_name(path.name + ".raw"), **synth_kwargs)
    ingest(raw, path, codec=codec, workers=1, progress=False)
    return open_store(path)
