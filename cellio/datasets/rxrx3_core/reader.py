"""RxRx3-core's raw data as the ingest reads it: `READER`, registered under "rxrx3-core".

A raw RxRx3-core copy is the Hugging Face repository `recursionpharma/rxrx3-core` (metadata_rxrx3_core.csv and
data/train-*.parquet), as a local directory or an fsspec URL of it. `read_sites` joins the metadata to an index of
the shards' keys into the site table (one row per well: path_<key> names the shard of each channel's image, row_<key>
its row there); `read_site` reads those six rows back and decodes their JPEG 2000 with imagecodecs (measured the
faster decoder here, docs/dataset_formats.md).

What is wrong with the input and what happens:

| found | result |
|---|---|
| a key not `{experiment}/Plate{plate}/{address}_s1_{channel}`, a channel outside 1..6, a site other than 1, a well outside the 1,536-well plate | MetadataError naming shard, row and key |
| the same channel image of a well twice | MetadataError naming both places |
| an image whose well is not in the metadata | MetadataError naming shard, row and key |
| every shard of `train-i-of-n` present: a metadata well without images, or a well with some channels missing | MetadataError naming the well (and the channels found, with their shards) |
| a partial download (some shards of `train-i-of-n` absent): such wells | skipped, listed in `attrs["skipped"]` (well id and why) and logged |
| a JPEG 2000 that does not decode, or decodes to another type or size | ImageError naming shard, row and key (ingest records the site as failed or stops, per its `on_error`) |
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import ImageError, MetadataError, MissingDependencyError
from ..reader import DatasetReader
from .layout import METADATA_FILE, ROW_COLUMNS, RXRX3_CORE, SITE_COLUMNS
from .metadata import read_wells
from .shards import image_key, index_shard, list_shards, shard_cache
from .source import normalize_source, open_source

__all__ = ["READER", "read_sites", "read_site", "is_raw_dir", "decode_jp2"]

log = logging.getLogger(__name__)

_PATHS = RXRX3_CORE.path_columns
_CHANNELS = tuple(range(1, RXRX3_CORE.n_channels + 1))  # the channel numbers of the keys, in store order


def read_sites(raw: str | os.PathLike[str]) -> pd.DataFrame:
    """The site table of an RxRx3-core copy (see the module docstring for what is checked)."""
    fs, root, source = open_source(raw)
    wells = read_wells(fs, root, source)
    shards, absent = list_shards(fs, root, source)
    if absent:
        log.warning("%s: %d of the %d shards are absent (%s%s): wells with images there are skipped",
                    source, len(absent), len(absent) + len(shards), ", ".join(absent[:3]),
                    ", ..." if len(absent) > 3 else "")
    # each image's slot: well index (metadata order) x 6 + channel - 1; per slot its shard and row (-1: none).
    # Only integer arrays outlive a shard: the real set's 1,335,606 keys cost ~20 MB here, not their strings.
    n = len(wells)
    lookup = pd.Index(wells["experiment"] + "/Plate" + wells["plate"].astype(str) + "/" + wells["well"])
    slots, shard_of, row_of = [], [], []
    for i, shard in enumerate(shards):  # one shard at a time, the key column only
        part = index_shard(fs, root, shard, source)
        well = lookup.get_indexer(part["well"])
        orphan = np.flatnonzero(well < 0)
        if orphan.size:
            r = orphan[0]
            raise MetadataError(f"{source}: {shard} row {r}: key {part['key'].iat[r]!r} names a well that is not in "
                                f"{METADATA_FILE} ({orphan.size} such image(s) in this shard); expected every "
                                "image's well there")
        slots.append(well.astype(np.int64) * len(_CHANNELS) + part["channel"].to_numpy() - 1)
        shard_of.append(np.full(len(part), i, dtype=np.int32))
        row_of.append(part["row"].to_numpy(np.int64))
        log.debug("%s: %d keys", shard, len(part))
    slot, shard_of, row_of = np.concatenate(slots), np.concatenate(shard_of), np.concatenate(row_of)
    order = np.argsort(slot, kind="stable")
    repeat = np.flatnonzero(slot[order][1:] == slot[order][:-1])
    if repeat.size:
        a, b = order[repeat[0]], order[repeat[0] + 1]
        w, c = divmod(int(slot[a]), len(_CHANNELS))
        key = image_key(wells["experiment"].iat[w], wells["plate"].iat[w], wells["well"].iat[w], c + 1)
        raise MetadataError(f"{source}: the image {key!r} is in {shards[shard_of[a]]} row {row_of[a]} and again in "
                            f"{shards[shard_of[b]]} row {row_of[b]} ({repeat.size} repeated key(s)); expected each "
                            "channel image once")
    shard_at = np.full(n * len(_CHANNELS), -1, dtype=np.int32)
    row_at = np.full(n * len(_CHANNELS), -1, dtype=np.int64)
    shard_at[slot], row_at[slot] = shard_of, row_of
    shard_at, row_at = shard_at.reshape(n, -1), row_at.reshape(n, -1)
    del slot, shard_of, row_of, order

    complete = (shard_at >= 0).all(axis=1)
    skipped = []
    if not complete.all():
        bad = np.flatnonzero(~complete)
        reasons = [_missing_reason(shard_at[w], row_at[w], shards) for w in bad]
        ids = wells["id_code"].to_numpy()[bad]
        if not absent:
            lines = [f"{idc}: {why}" for idc, why in zip(ids, reasons)]
            raise MetadataError(f"{source}: {len(lines)} well(s) of {METADATA_FILE} without all six channel images "
                                "in data/ (every shard of the set is present):\n  " + "\n  ".join(lines[:20])
                                + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""))
        skipped = [{"id_code": idc, "reason": why} for idc, why in zip(ids, reasons)]
        log.warning("%s: %d well(s) skipped, their images are in absent shards (e.g. %s: %s)", source,
                    len(skipped), skipped[0]["id_code"], skipped[0]["reason"])
    if not complete.any():
        raise MetadataError(f"{source}: no well of {METADATA_FILE} has its images in the shards present "
                            f"({len(shards)} shard(s))")

    table = wells[complete].copy()
    shard_at, row_at = shard_at[complete], row_at[complete]
    names = np.array(shards, dtype=object)
    for c, (path_col, row_col) in enumerate(zip(_PATHS, ROW_COLUMNS)):
        table[path_col] = names[shard_at[:, c]].astype(str)
        table[row_col] = row_at[:, c]
    table["_shard"], table["_row"] = shard_at[:, 0], row_at[:, 0]
    # store order = shard order: consecutive sites read consecutive rows (one row-group read serves several)
    table = table.sort_values(["_shard", "_row"], kind="stable")
    table = table[list(SITE_COLUMNS)].reset_index(drop=True)
    table.attrs["raw_dir"] = source
    table.attrs["layout"] = RXRX3_CORE
    table.attrs["skipped"] = skipped
    log.info("read %d wells (%d experiments) from %d shard(s) of %s", len(table), table["experiment"].nunique(),
             len(shards), source)
    return table


def _missing_reason(shard_at: np.ndarray, row_at: np.ndarray, shards: list[str]) -> str:
    found = [f"{c} ({shards[s]} row {r})" for c, s, r in zip(_CHANNELS, shard_at, row_at) if s >= 0]
    if not found:
        return "no image in the shards present"
    missing = [c for c, s in zip(_CHANNELS, shard_at) if s < 0]
    return f"channel(s) {missing} missing; found channel(s) {', '.join(found)}"


def decode_jp2(data: bytes, where: str) -> np.ndarray:
    """One JPEG 2000 image -> 2-D array, or ImageError naming `where` and why."""
    try:
        import imagecodecs
    except ImportError:
        raise MissingDependencyError("imagecodecs", "rxrx3", "Reading RxRx3-core's JPEG 2000 images") from None
    try:
        return imagecodecs.jpeg2k_decode(data, numthreads=1)
    except Exception as exc:  # imagecodecs raises its own Jpeg2kError, and ValueError/RuntimeError on bad input
        raise ImageError(f"{where}: the JPEG 2000 image does not decode ({type(exc).__name__}: {exc})") from None


def read_site(raw: str, row: Mapping[str, object]) -> np.ndarray:
    """The (H, W, 6) uint8 pixels of one site-table row: its six channel images read from their shards (the
    process's ShardCache) and decoded. ImageError naming shard, row and key for an image that does not decode or
    is not a 2-D uint8 of the same size as the site's other channels."""
    source = normalize_source(raw)
    cache = shard_cache()
    planes = []
    for c, path_col, row_col in zip(_CHANNELS, _PATHS, ROW_COLUMNS):
        shard, r = str(row[path_col]), int(row[row_col])  # type: ignore[call-overload]
        key = image_key(str(row["experiment"]), int(row["plate"]), str(row["well"]), c)  # type: ignore[call-overload]
        where = f"{source}/{shard}: row {r} (key {key!r})"
        plane = decode_jp2(cache.blob(source, shard, r, key), where)
        if plane.ndim != 2 or plane.dtype != RXRX3_CORE.dtype:
            raise ImageError(f"{where}: decoded to {plane.dtype} {plane.shape}, expected a single-channel "
                             f"{RXRX3_CORE.pixel_dtype} image")
        if planes and plane.shape != planes[0].shape:
            raise ImageError(f"{where}: {plane.shape[0]}x{plane.shape[1]} (HxW) pixels, but channel 1 of the site "
                             f"has {planes[0].shape[0]}x{planes[0].shape[1]}")
        planes.append(plane)
    return np.stack(planes, axis=-1)


def is_raw_dir(path: Path) -> bool:
    """A local directory holding metadata_rxrx3_core.csv and a data/ folder."""
    path = Path(path)
    return (path / METADATA_FILE).is_file() and (path / "data").is_dir()


READER = DatasetReader(layout=RXRX3_CORE, source_kind="rxrx3-core-parquet", read_sites=read_sites,
                       is_raw_dir=is_raw_dir, read_site=read_site,
                       raw_description="a copy of the Hugging Face repository recursionpharma/rxrx3-core "
                                       "(metadata_rxrx3_core.csv, data/train-*.parquet), local or an fsspec URL")
