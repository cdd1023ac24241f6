"""`DatasetReader`: how cellio reads one kind of raw data set from disk, next to the layout it has.

A data set package (`cellio/datasets/rxrx1/`, ...) defines one as `READER` and the registry
(`cellio/datasets/registry.py`) finds it by name. The contract is small on purpose: the reader turns a raw
directory into the validated site table, one row per site, whose `layout.path_columns` name each channel's image
file relative to the directory (and, optionally, `layout.pixel_mean_columns` / `pixel_std_columns` the data set's
own statistics, which ingest checks each site against). A data set whose pixels are not one PNG file per channel
(TIFF with illumination correction, JPEG 2000 bytes in parquet shards, OME-Zarr arrays) also gives `read_site`,
which turns one row of that table into the site's pixels; without it ingest decodes the PNGs the path columns
name. Everything after that (the store, the loader) needs only the layout.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MetadataError
from .layout import DatasetLayout

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# read_site(raw, row) -> (H, W, C) array of layout.dtype, channels in layout order. `raw` is what the user gave
# ingest (a directory, or an object-storage URL such as "s3://bucket/prefix"); `row` one row of the site table as
# a mapping of column -> value. Bad pixels raise cellio.errors.ImageError naming the file (or key) and what was
# expected. It runs in ingest's worker processes: a module-level function that may keep per-process caches.
SiteReader = Callable[[str, Mapping[str, object]], "np.ndarray"]

__all__ = ["DatasetReader", "SiteReader"]


@dataclass(frozen=True)
class DatasetReader:
    """layout: the data set's shape; source_kind: what the store records as `source.kind` ("rxrx1-png");
    read_sites(raw): the site table (raises MetadataError naming file, row and column for bad metadata), with the
    columns every site table has (`cellio/datasets/sites.py`; ingest checks them); `raw` is a Path for local data
    and, for a reader with read_site, the object-storage URL string as the user gave it;
    is_raw_dir(path): whether `path` looks like this data set's raw directory (cheap: a few file names);
    raw_description: how the raw directory looks, for messages ("the unzipped RxRx1 directory (train/, test/,
    *.csv)"); stats_source: where the site table's pixel_mean_* / pixel_std_* columns come from, named when a site
    does not match them ("pixel_stats.csv"); read_site: the site's pixels from one row (`SiteReader`), or None for
    one PNG per channel named by `layout.path_columns`; bind: for a data set whose layout is read from the raw
    source itself (an OME-Zarr plate: its channels, pixel type, plate geometry), `bind(raw)` returns the reader
    bound to that source's layout (the registered reader's own layout then only names the data set), None where
    the layout is fixed (`bind(raw, metadata=None, channels=None)`: metadata names the data set's perturbation
    tables, channels the ones the ingest keeps, so a data set that reads only the channels asked for (JUMP's
    brightfield planes) binds to them; a bind may ignore it, the ingest then picks them from the bound layout).
    The callables are module-level functions, so a reader pickles into worker processes."""

    layout: DatasetLayout
    source_kind: str
    read_sites: Callable[[Path], "pd.DataFrame"]
    is_raw_dir: Callable[[Path], bool]
    raw_description: str
    stats_source: str = "the data set's own statistics"
    read_site: SiteReader | None = None
    bind: Callable[..., "DatasetReader"] | None = None

    @property
    def name(self) -> str:
        return self.layout.name

    def for_source(self, raw: str | Path, metadata: str | Path | None = None,
                   channels: Sequence[str] | None = None) -> "DatasetReader":
        """The reader for the raw source `raw`: `bind(raw, metadata=metadata, channels=channels)` where the layout
        comes from the source (`metadata`: the data set's own perturbation tables, e.g. JUMP's consortium tables or
        an OME-Zarr plate's perturbation CSV; `channels`: the names the ingest keeps, None all), else itself. A
        fixed-layout data set refuses `metadata` by name (it reads its own); its channels are picked by the
        ingest."""
        if self.bind is not None:
            return self.bind(raw, metadata=metadata, channels=None if channels is None else tuple(channels))
        if metadata is not None:
            raise MetadataError(f"metadata={str(metadata)!r}: the {self.name} reader reads its metadata from the raw "
                                f"data itself ({self.raw_description}); it takes no separate metadata")
        return self
