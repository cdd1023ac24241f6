"""A store's skeleton: the array metadata, the site table and the root attributes (complete=false), written once
under a marker so a run killed half-way through is detected and rebuilt in place; and, for a rerun, checking that
an existing store is this ingest's (same arguments, same plan) before resuming it. Never deletes a file cellio did
not write."""
from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ImageError, StoreError
from ..store.attributes import LAYOUT_ATTRIBUTE, layout_attribute, recorded_dataset, recorded_dtype
from ..store.columns import column_kind, decode_strings, encode_column
from ..store.files import FileTarget
from ..store.format import AXES, CREATING_MARKER, FORMAT_NAME, FORMAT_VERSION, JOURNAL_DIR, LOCK_NAME, TMP_DIR, \
    group_metadata, is_store_file
from ..store.images import image_layout, images_metadata
from ..store.shards import ShardLayout
from ..store.tables import read_small_array
from .png import probe_shape
from .source import RawSource
from .space import check_space

__all__ = ["images_meta_for", "write_root", "read_root", "prepare", "check_plan"]

log = logging.getLogger(__name__)


def images_meta_for(attrs: dict[str, Any], n: int, shape: tuple[int, int, int], codec: str,
                    checksum: bool) -> dict[str, Any]:
    """images/zarr.json of a store from its ingest arguments (chunked when they name no layout: format <= 1.1) and
    the pixel type its data set layout records."""
    lay = attrs.get("ingest", {}).get("layout") or {"layout": "chunked"}
    dtype = recorded_dtype(attrs)
    if lay["layout"] == "sharded":
        return images_metadata(n, shape, codec, checksum, "sharded", int(lay["sites_per_shard"]),
                               tuple(lay["tile"]), dtype=dtype)
    return images_metadata(n, shape, codec, checksum, dtype=dtype)


def _create_skeleton(target: FileTarget, plan: pd.DataFrame, shape: tuple[int, int], params: dict[str, Any],
                     source: RawSource) -> dict[str, Any]:
    """Array metadata, the site table and the root attributes (complete=false, the data set's layout with the
    ingested channels at this store's site `shape`), guarded by CREATING_MARKER.

    Every file is written in place (atomic replace), so rebuilding over an interrupted skeleton deletes nothing.
    """
    target.write(CREATING_MARKER, b"")
    H, W = shape
    layout = source.layout.replace(site_shape=(H, W))
    C = layout.n_channels
    images = images_meta_for({"ingest": params, LAYOUT_ATTRIBUTE: layout_attribute(layout)}, len(plan), (H, W, C),
                             params["codec"], True)
    target.write_json("images/zarr.json", images)
    target.write_json("sites/zarr.json", group_metadata())
    columns = []
    for name in plan.columns:
        kind = column_kind(plan[name])
        target.write_small_array(f"sites/{name}", encode_column(plan[name], kind))
        columns.append({"name": name, "dtype": kind})
    attrs = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "complete": False,
        "layout": AXES,
        "image_chunks": _image_chunks(images),
        "image_shape": [H, W, C],
        "channels": list(range(1, C + 1)),
        "channel_names": list(layout.channel_names),
        "codec": params["codec"],
        "n_sites": len(plan),
        "pixels_per_site": H * W,
        "site_columns": columns,
        "source": {"raw_dir": source.location, "kind": source.reader.source_kind},
        "ingest": params,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset_layout": layout_attribute(layout),
    }
    write_root(target, attrs)
    target.remove(CREATING_MARKER)
    return attrs


def _image_chunks(images: dict[str, Any]) -> dict[str, Any]:
    """The root attribute `image_chunks` (format 1.2): how sites are laid out in images/."""
    if image_layout(images) != "sharded":
        return {"layout": "chunked"}
    lay = ShardLayout.from_metadata(images)
    return {"layout": "sharded", "sites_per_shard": lay.sites, "tile": list(lay.tile)}


def write_root(target: FileTarget, attrs: dict[str, Any]) -> None:
    """The root zarr.json with `attrs`: one atomic write, the commit point of every change to a store."""
    target.write_json("zarr.json", group_metadata(attrs))


def read_root(target: FileTarget) -> dict[str, Any] | None:
    """The root attributes of a cellio store; None when zarr.json is missing, torn or not cellio's."""
    try:
        with target.fs.open(target.key("zarr.json"), "rb") as f:
            node = json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return None
    attrs = node.get("attributes", {}) if isinstance(node, dict) else {}
    return attrs if attrs.get("format") == FORMAT_NAME else None


def _examples(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def prepare(target: FileTarget, plan: pd.DataFrame, source: RawSource, params: dict[str, Any],
            image_size: tuple[int, int] | None) -> dict[str, Any]:
    """Create the skeleton, or validate an existing one for resuming. Never deletes a file cellio did not write."""
    files = target.files(skip=("images/c",))
    foreign = [f for f in files if not is_store_file(f)]
    if CREATING_MARKER in files:
        if foreign:
            raise StoreError(f"{target.path} holds a {CREATING_MARKER} marker (a `cellio ingest` stopped while "
                             f"creating a store here) and files cellio does not write ({_examples(foreign)}); "
                             f"nothing was changed: move those files away, or choose a new store path")
        log.info("%s: skeleton of an interrupted run found; rebuilding it in place", target.path)
        target.remove(JOURNAL_DIR, recursive=True)  # cellio's own; no batch can have finished before a skeleton
        return _new_store(target, plan, source, params, image_size)
    attrs = read_root(target) if "zarr.json" in files else None
    if attrs is None:
        if foreign or "zarr.json" in files:
            shown = foreign or ["zarr.json"]
            raise StoreError(f"{target.path} exists and is not a cellio store (it holds {_examples(shown)}); choose "
                             f"a new path or delete it")
        ours = [f for f in files if f != LOCK_NAME and not f.startswith(TMP_DIR + "/")]
        if ours:
            raise StoreError(f"{target.path} holds cellio store files ({_examples(ours)}) but no root zarr.json: a "
                             f"damaged store, not resumable; delete it or choose a new path")
        return _new_store(target, plan, source, params, image_size)
    if recorded_dataset(attrs) != source.reader.name:
        raise StoreError(f"{target.path} holds {recorded_dataset(attrs)} sites; this call reads "
                         f"{source.reader.name} data from {source.location}: use a new store path")
    if attrs.get("ingest") != params:
        raise StoreError(f"{target.path} was ingested with {attrs.get('ingest')}, this call asks for {params}; "
                         f"rerun with the original arguments to resume, or use a new store path")
    check_plan(target, attrs, plan)
    return attrs


def _new_store(target: FileTarget, plan: pd.DataFrame, source: RawSource, params: dict[str, Any],
               image_size: tuple[int, int] | None) -> dict[str, Any]:
    shape = tuple(image_size or _probe_shape(source, plan))
    layout = source.layout
    check_space(target, (*shape, layout.n_channels), params["codec"], len(plan), layout.pixel_dtype)  # first
    return _create_skeleton(target, plan, shape, params, source)


def _probe_shape(source: RawSource, plan: pd.DataFrame) -> tuple[int, int]:
    """The site size (H, W): from the PNG headers of the plan's first-channel files, or the first site read through
    the data set reader's read_site (ImageError naming the site when it is not an (H, W, C) array)."""
    if source.png:
        return probe_shape(Path(source.location), plan, source.layout.path_columns[0])
    row = plan.iloc[0]
    assert source.reader.read_site is not None
    site = source.reader.read_site(source.location, row.to_dict())
    if not isinstance(site, np.ndarray) or site.ndim != 3:
        found = f"{site.dtype} {site.shape}" if isinstance(site, np.ndarray) else type(site).__name__
        raise ImageError(f"{row['id_code']} site {row['site']}: the {source.reader.name} reader's read_site returned "
                         f"{found}, expected an (H, W, {source.reader.layout.n_channels}) array")
    return int(site.shape[0]), int(site.shape[1])


def check_plan(target: FileTarget, attrs: dict[str, Any], plan: pd.DataFrame) -> None:
    """StoreError unless the store's site table is `plan`, site for site (the raw data did not change)."""
    if attrs["n_sites"] != len(plan):
        raise StoreError(f"{target.path} plans {attrs['n_sites']} sites, the raw data now gives {len(plan)}; "
                         f"the source changed since the store was started")
    ids = _decode_ids(target)
    mine = (plan["id_code"] + "_s" + plan["site"].astype(str)).tolist()
    if ids != mine:
        first = next(k for k, (a, b) in enumerate(zip(ids, mine)) if a != b)
        raise StoreError(f"{target.path}: site {first} is {ids[first]} in the store but {mine[first]} in the raw "
                         f"data; the source changed since the store was started")


def _decode_ids(target: FileTarget) -> list[str]:
    idc = decode_strings(read_small_array(target.fs, target.key("sites/id_code")))
    site = read_small_array(target.fs, target.key("sites/site"))
    return [f"{a}_s{int(b)}" for a, b in zip(idc, site)]
