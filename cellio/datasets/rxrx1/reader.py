"""RxRx1's raw data as the ingest and `cellio show` read it: `READER`, registered under "rxrx1".

A raw RxRx1 directory is the unzipped Kaggle set (train.csv, test.csv, the controls CSVs, pixel_stats.csv,
train/ and test/ with `{experiment}/Plate{p}/{well}_s{site}_w{c}.png`) or the rxrx.ai release (metadata.csv and
images/); `read_metadata` turns either into the site table whose `path_w1..w6` name each site's six PNGs.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..reader import DatasetReader
from .layout import RXRX1

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["READER", "read_sites", "is_raw_dir"]


def read_sites(raw_dir: Path) -> "pd.DataFrame":
    """The validated site table of an RxRx1 directory (`read_metadata`)."""
    from .metadata import read_metadata

    return read_metadata(raw_dir)


def is_raw_dir(path: Path) -> bool:
    """A directory holding the Kaggle CSVs (train.csv or test.csv) or the rxrx.ai metadata.csv (with a sirna
    column: RxRx2's rxrx.ai download is also a metadata.csv, with treatment columns instead)."""
    from ..checks import csv_header

    path = Path(path)
    return any((path / name).is_file() for name in ("train.csv", "test.csv")) or \
        "sirna" in csv_header(path / "metadata.csv")


READER = DatasetReader(layout=RXRX1, source_kind="rxrx1-png", read_sites=read_sites, is_raw_dir=is_raw_dir,
                       raw_description="the unzipped RxRx1 directory (train/, test/, *.csv)",
                       stats_source="pixel_stats.csv")
