"""The raw data set one ingest reads: `RawSource` (its DatasetReader, where the data lies, the channels the store
keeps) and `open_source`, which checks what it can before anything is read.

Where the data lies: a local path (resolved, so workers elsewhere in the file system agree) or, for a reader with
`read_site`, an object-storage URL (`s3://bucket/prefix`) passed through untouched: such a reader fetches what it
needs itself. A reader without `read_site` reads one PNG per channel (its layout's path columns) from a local
directory. The channels: all of the reader's layout, or a subset chosen by name (`channels=["DNA", "RNA"]`), in the
order given; the store's layout then lists only those.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..datasets import DatasetLayout, DatasetReader
from ..datasets.sites import check_site_table
from ..errors import ImageError, MetadataError
from ..store.files import is_url

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RawSource", "open_source"]


@dataclass(frozen=True)
class RawSource:
    """reader: the data set's reader; location: the resolved local path or the URL as given; pick: the reader's
    channel indices the store keeps, in store order (None: all). Picklable: it travels to ingest's workers."""

    reader: DatasetReader
    location: str
    pick: tuple[int, ...] | None = None

    @property
    def layout(self) -> DatasetLayout:
        """The store's layout: the reader's, with only the picked channels."""
        full = self.reader.layout
        return full if self.pick is None else full.replace(channels=tuple(full.channels[i] for i in self.pick))

    @property
    def local(self) -> bool:
        """The data lies in the local file system (not behind an object-storage URL)."""
        return not is_url(self.location)

    @property
    def png(self) -> bool:
        """One PNG per channel, named by the layout's path columns (the reader has no read_site)."""
        return self.reader.read_site is None

    @property
    def root(self) -> Path | str:
        """What the reader's read_sites takes: a Path for local data, the URL string otherwise."""
        return Path(self.location) if self.local else self.location

    def read_sites(self) -> "pd.DataFrame":
        """The reader's site table, held to the columns every site table has (datasets/sites.py)."""
        table = self.reader.read_sites(self.root)
        check_site_table(table, self.reader.layout, self.location)
        return table

    def png_path(self, relative: str) -> str:
        return os.path.join(self.location, relative)

    def read_site(self, row: Mapping[str, Any], shape: tuple[int, int], name: str) -> list[np.ndarray]:
        """The picked channels of one site as (H, W) planes, from the reader's read_site; ImageError naming the
        site (`name`) and the reader when what it returns is not the layout's (H, W, C) of its pixel type, or when
        it fails with an OSError or ValueError of its own (a missing or unreadable file: `on_error="skip"` then
        records the site instead of stopping the ingest)."""
        assert self.reader.read_site is not None
        lay = self.reader.layout
        try:
            site = self.reader.read_site(self.location, row)
        except (OSError, ValueError) as exc:
            raise ImageError(f"{name}: the {lay.name} reader's read_site failed ({type(exc).__name__}: {exc})") \
                from None
        expected = (*shape, lay.n_channels)
        if not isinstance(site, np.ndarray) or site.shape != expected or site.dtype != lay.dtype:
            found = f"{site.dtype} {site.shape}" if isinstance(site, np.ndarray) else type(site).__name__
            raise ImageError(f"{name}: the {lay.name} reader's read_site returned {found}, expected {lay.pixel_dtype} "
                             f"{expected} (H, W, channels)")
        return [site[:, :, c] for c in (self.pick if self.pick is not None else range(lay.n_channels))]


def open_source(raw: str | os.PathLike[str], reader: DatasetReader,
                channels: str | Sequence[str] | None = None) -> RawSource:
    """The RawSource of `raw` for `reader` keeping `channels` (names or keys; None all). MetadataError when a PNG
    reader's directory does not exist or a URL is given to a reader that reads only local PNGs; LayoutError naming
    unknown channels and listing the layout's."""
    pick = None if channels is None else reader.layout.channel_selection(channels)
    text = os.fspath(raw)
    if is_url(text):
        if reader.read_site is None:
            raise MetadataError(f"{text}: the {reader.name} reader reads PNG files from a local directory ("
                                f"{reader.raw_description}); an object-storage URL needs a data set whose reader "
                                f"has read_site")
        return RawSource(reader, text, pick)
    path = Path(text)
    if reader.read_site is None and not path.is_dir():
        raise MetadataError(f"{path}: raw data directory not found (expected {reader.raw_description})")
    if not path.exists():
        raise MetadataError(f"{path}: raw data not found (expected {reader.raw_description})")
    return RawSource(reader, str(path.resolve()), pick)
