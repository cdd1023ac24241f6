"""`DatasetReader`: how cellio reads one kind of raw data set from disk, next to the layout it has.

A data set package (`cellio/datasets/rxrx1/`, ...) defines one as `READER` and the registry
(`cellio/datasets/registry.py`) finds it by name. The contract is small on purpose: the reader turns a raw
directory into the validated site table, one row per site, whose `layout.path_columns` name each channel's image
file relative to the directory (and, optionally, `layout.pixel_mean_columns` / `pixel_std_columns` the data set's
own statistics, which ingest checks each site against). Everything after that (decoding, the store, the loader)
needs only the layout.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .layout import DatasetLayout

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DatasetReader"]


@dataclass(frozen=True)
class DatasetReader:
    """layout: the data set's shape; source_kind: what the store records as `source.kind` ("rxrx1-png");
    read_sites(raw_dir): the site table (raises MetadataError naming file, row and column for bad metadata);
    is_raw_dir(path): whether `path` looks like this data set's raw directory (cheap: a few file names);
    raw_description: how the raw directory looks, for messages ("the unzipped RxRx1 directory (train/, test/,
    *.csv)"); stats_source: where the site table's pixel_mean_* / pixel_std_* columns come from, named when a site
    does not match them ("pixel_stats.csv"). The callables are module-level functions, so a reader pickles into
    worker processes."""

    layout: DatasetLayout
    source_kind: str
    read_sites: Callable[[Path], "pd.DataFrame"]
    is_raw_dir: Callable[[Path], bool]
    raw_description: str
    stats_source: str = "the data set's own statistics"

    @property
    def name(self) -> str:
        return self.layout.name
