"""The plan of an ingest: the raw data set's site table (from its DatasetReader) filtered by split, experiment, cell
type, plate and limit (row i of the plan is image i of the store), and the ingest arguments that define a store's
contents (recorded in its `ingest` attribute; a resumed ingest must pass the same)."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import pandas as pd

from ..errors import MetadataError, StoreError
from ..store.images import LAYOUTS
from ..store.shards import DEFAULT_TILE
from .source import RawSource

__all__ = ["VERIFY_ATOL", "as_tuple", "plan_sites", "ingest_params", "layout_params"]

log = logging.getLogger(__name__)

# |ours - pixel_stats.csv| allowed on each channel's mean and std (0..255 scale; a uint16 data set's in proportion,
# VERIFY_ATOL * 65535 / 255). Kaggle's numbers come from the same 8-bit PNGs, so honest differences are rounding of
# the printed value and ddof; a wrong file, swapped channel or truncated image moves them by far more.
VERIFY_ATOL = 0.1


def as_tuple(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    out = tuple(v.strip() for v in value if v.strip())
    return out or None


def plan_sites(source: RawSource, datasets: tuple[str, ...], experiments: tuple[str, ...] | None,
               cell_types: tuple[str, ...] | None, limit: int | None,
               plates: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The sites to ingest, in store order: the source's site table, filtered (MetadataError naming a filter value
    the data set does not have, or a selection that leaves nothing). Plates are compared as text (plate 3 = "3")."""
    raw = source.location
    meta = source.read_sites()
    for name, wanted, col in (("datasets", datasets, "dataset"), ("experiments", experiments, "experiment"),
                              ("cell_types", cell_types, "cell_type"), ("plates", plates, "plate")):
        if wanted is None:
            continue
        if col == "plate":  # numbers or names: the command line gives text
            values = meta[col].astype(str)
            unknown = sorted(set(wanted) - set(values))
            if unknown:
                raise MetadataError(f"plates={list(wanted)}: {unknown} not found in {raw}; available: "
                                    f"{sorted(set(values))}")
            meta = meta[values.isin(wanted).to_numpy()]
            continue
        unknown = sorted(set(wanted) - set(meta[col]))
        if unknown and col == "dataset" and set(wanted) & set(meta[col]):
            # a split with no sites (a train-only set, say) is not an error; an empty selection is, below
            log.warning("%s: no %s sites; ingesting %s", raw, "/".join(unknown), sorted(set(wanted) - set(unknown)))
        elif unknown:
            raise MetadataError(f"{name}={list(wanted)}: {unknown} not found in {raw}; available: "
                                f"{sorted(set(meta[col]))}")
        meta = meta[meta[col].isin(wanted)]
    if limit is not None:
        if limit < 1:
            raise MetadataError(f"limit={limit}: expected a positive number of sites")
        meta = meta.head(limit)
    if meta.empty:
        raise MetadataError(f"{raw}: no sites left after filtering (datasets={datasets}, experiments={experiments}, "
                            f"cell_types={cell_types}, plates={plates})")
    return meta.reset_index(drop=True)


def ingest_params(codec: str, verify: bool, datasets: tuple[str, ...],
                  experiments: tuple[str, ...] | None, cell_types: tuple[str, ...] | None,
                  limit: int | None, layout: dict[str, Any] | None = None,
                  channels: tuple[str, ...] | None = None, plates: tuple[str, ...] | None = None,
                  metadata: str | None = None) -> dict[str, Any]:
    """The store's `ingest` attribute: the arguments that define its contents. `channels` (the store's channel
    names, when a subset was chosen), `plates` and `metadata` (the perturbation tables a bound reader joined) are recorded only when given, so a store made without them keeps
    the attribute of earlier versions (and resumes under them)."""
    params = {"codec": codec, "verify": verify, "verify_atol": VERIFY_ATOL, "datasets": list(datasets),
              "experiments": list(experiments) if experiments else None,
              "cell_types": list(cell_types) if cell_types else None, "limit": limit}
    if layout is not None and layout["layout"] != "chunked":  # chunked stores keep the 1.1 params (resumable)
        params["layout"] = dict(layout)
    if channels:
        params["channels"] = list(channels)
    if plates:
        params["plates"] = list(plates)
    if metadata:
        params["metadata"] = metadata
    return params


def layout_params(layout: str, sites_per_shard: int, tile: int | tuple[int, int] | None) -> dict[str, Any]:
    """The image layout as recorded in the ingest arguments (tile as asked; clipped to the sites later)."""
    if layout not in LAYOUTS:
        raise StoreError(f"layout {layout!r} is unknown; expected one of {', '.join(LAYOUTS)}")
    if layout == "chunked":
        return {"layout": "chunked"}
    if int(sites_per_shard) < 1:
        raise StoreError(f"sites_per_shard={sites_per_shard}: expected a positive number of sites per shard")
    t = DEFAULT_TILE if tile is None else tile
    t = [int(t), int(t)] if isinstance(t, int) else [int(v) for v in t]
    if len(t) != 2 or min(t) < 1:
        raise StoreError(f"tile={tile!r}: expected a positive tile size in pixels, or (height, width)")
    return {"layout": "sharded", "sites_per_shard": int(sites_per_shard), "tile": t}
