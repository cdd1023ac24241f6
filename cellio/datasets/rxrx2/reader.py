"""RxRx2's raw data as the ingest reads it: `READER`, registered under "rxrx2".

A raw RxRx2 directory is the unzipped rxrx.ai release: the metadata CSV (`rxrx2-metadata.csv` as the README names
it, or `metadata.csv`) beside `images/{experiment}/Plate{plate}/{well}_s{site}_w{channel}.png`. Its images are one
8-bit PNG per channel, so the ingest's PNG route reads them (`read_site` is None): `read_sites` gives the site
table whose `path_w1..w6` name each site's six files.

What is wrong with the input and what happens:

| found | result |
|---|---|
| a bad metadata row (see `metadata.py`) | MetadataError naming file, row, column, found vs expected |
| a well with fewer than 4 sites in the metadata (the real file has 131,953 sites: not 4 a well everywhere) | kept; listed in `attrs["incomplete_wells"]` (well id and its sites), logged |
| a metadata site whose channel files are (partly) absent | kept in the table: the ingest names each missing file (ImageError) and stops or records the site as failed, per its `on_error`, so a rerun after restoring the file resumes; listed in `attrs["missing_files"]` and logged here first |
| site images on disk that the metadata does not list | not read; counted in the log |
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pandas as pd

from ..checks import csv_header
from ..reader import DatasetReader
from .layout import METADATA_FILES, RXRX2
from .metadata import read_metadata

__all__ = ["READER", "read_sites", "is_raw_dir"]

log = logging.getLogger(__name__)

_IMAGE = re.compile(r"([A-Z]{1,2}\d{2})_s(\d+)_w(\d+)\.png")


def read_sites(raw_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The site table of an RxRx2 directory, with what its image folders lack recorded in `attrs` (module
    docstring). One directory listing per plate folder."""
    raw = Path(raw_dir).resolve()
    table = read_metadata(raw)
    paths = list(RXRX2.path_columns)
    present: set[str] = set()
    unlisted = 0
    listed = set(pd.concat([table[c] for c in paths], ignore_index=True))
    for folder in ("images/" + table["experiment"] + "/Plate" + table["plate"].astype(str)).unique():
        try:
            names = [e.name for e in os.scandir(raw / folder)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for n in names:
            if _IMAGE.fullmatch(n):
                rel = f"{folder}/{n}"
                present.add(rel)
                unlisted += rel not in listed
    missing_files = []
    for row in table[["id_code", "site", *paths]].itertuples(index=False):
        gone = [p for p in row[2:] if p not in present]
        if gone:
            missing_files.append({"id_code": row[0], "site": int(row[1]), "missing": gone})
    if missing_files:
        first = missing_files[0]
        log.warning("%s: %d site(s) of the metadata lack channel files (e.g. %s site %d: %s); the ingest names "
                    "each and stops or records the site as failed (on_error)", raw, len(missing_files),
                    first["id_code"], first["site"], ", ".join(first["missing"]))
    if unlisted:
        log.warning("%s: %d image file(s) under images/ belong to no site of the metadata; they are not read",
                    raw, unlisted)
    sites = table.groupby("id_code", sort=False)["site"].agg(tuple)
    short = sites[sites.map(len) < RXRX2.sites_per_well]
    if len(short):
        log.info("%s: %d well(s) have fewer than %d sites in the metadata (e.g. %s: sites %s)", raw, len(short),
                 RXRX2.sites_per_well, short.index[0], list(short.iloc[0]))
    table.attrs["raw_dir"] = str(raw)
    table.attrs["layout"] = RXRX2
    table.attrs["missing_files"] = missing_files
    table.attrs["incomplete_wells"] = [{"id_code": k, "sites": [int(s) for s in v]} for k, v in short.items()]
    log.info("read %d sites (%d wells, %d experiments) from %s", len(table), table["id_code"].nunique(),
             table["experiment"].nunique(), raw)
    return table


def is_raw_dir(path: Path) -> bool:
    """A directory with rxrx2-metadata.csv, or a metadata.csv with RxRx2's columns (treatment_conc)."""
    path = Path(path)
    if (path / METADATA_FILES[0]).is_file():
        return True
    return "treatment_conc" in csv_header(path / METADATA_FILES[1])


READER = DatasetReader(layout=RXRX2, source_kind="rxrx2-png", read_sites=read_sites, is_raw_dir=is_raw_dir,
                       raw_description="the unzipped RxRx2 directory (rxrx2-metadata.csv or metadata.csv, images/)")
