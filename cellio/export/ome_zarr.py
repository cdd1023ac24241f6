"""A cellio store (or a subset) out as OME-Zarr HCS plates: `export_ome_zarr(store, out, ...)`, `cellio export
STORE OUT --ome-zarr`.

One plate group per plate of the store, `OUT/{plate}.ome.zarr`, where a plate is the site table's (experiment,
plate) pair, named "{experiment}_{plate}" ("HUVEC-07_1"), or the plate alone where there is no experiment column
or it repeats the plate's name (a store read from one OME-Zarr plate). In each:

    plate metadata      rows and columns of the layout's plate geometry (all of them, so a viewer draws the
                        whole plate), the exported wells ("B/2" for cellio's "B02"), field_count, name
    {row}/{column}/     well metadata: images "0".."n-1", one per site of the well, in site order
      {field}/          multiscales: axes c, y, x; datasets "0" (full resolution) and, with levels > 1, "1", ...
                        (every 2**k-th pixel, scale 2**k); omero: each channel's label, colour and window from the
                        store's layout (a channel the composite leaves out: white, inactive); arrays (C, H, W) in
                        the layout's dtype, a chunk per channel plane, Blosc-zstd

NGFF 0.4 (Zarr v2) is the default: every current viewer and library reads it (napari-ome-zarr, Fiji/BigDataViewer,
QuPath, OMERO, bioformats2raw-based tools, ome-zarr-py); 0.5 (Zarr v3) needs a Zarr-v3-capable reader, which many
of them still lack. `version="0.5"` writes 0.5.

Nothing half-written is reported as done: a plate is written under `OUT/.{plate}.ome.zarr.partial`, validated
with ome-zarr-models, and renamed into place only then. A rerun resumes: a finished plate written from the same
store and selection (recorded in its attributes, key "cellio_export") is kept; one written from something else
is an error unless `overwrite=True`; a leftover .partial is discarded and written again.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..datasets.layout import DatasetLayout
from ..datasets.ome_zarr.models import validate_plate
from ..datasets.ome_zarr.ngff import VERSIONS, ZARR_FORMAT, hex_color, well_path
from ..errors import ConfigError, MetadataError, StoreError
from ..store import Store, open_store

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RECORD_KEY", "ExportedPlate", "ExportReport", "export_ome_zarr", "plate_names"]

log = logging.getLogger(__name__)

RECORD_KEY = "cellio_export"  # the plate group attribute that says what a finished plate was written from
DEFAULT_VERSION = "0.4"
AXES = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]


@dataclass(frozen=True)
class ExportedPlate:
    name: str
    path: str
    wells: int
    sites: int
    resumed: bool  # True: found finished from an earlier run with the same arguments, kept as it was


@dataclass(frozen=True)
class ExportReport:
    out: str
    version: str
    plates: tuple[ExportedPlate, ...]

    @property
    def n_sites(self) -> int:
        return sum(p.sites for p in self.plates)


def plate_names(sites: "pd.DataFrame") -> "pd.Series":
    """Each site's plate name in an export: "{experiment}_{plate}", or the plate alone (module docstring)."""
    plate = sites["plate"].astype(str)
    if "experiment" not in sites.columns:
        return plate
    experiment = sites["experiment"].astype(str)
    return plate.where(experiment == plate, experiment + "_" + plate)


def _omero(layout: DatasetLayout) -> dict[str, Any]:
    top = layout.max_value
    channels = []
    for c in layout.channels:
        lo, hi = c.display_range if c.display_range is not None else (0, top)
        channels.append({"label": c.name, "color": hex_color(c.color) if c.color is not None else "FFFFFF",
                         "active": c.color is not None, "coefficient": 1.0, "family": "linear", "inverted": False,
                         "window": {"min": 0.0, "max": float(top), "start": float(lo), "end": float(hi)}})
    return {"channels": channels, "rdefs": {"model": "color"}}


def _set_ome(group: Any, version: str, entries: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write OME metadata entries where `version` puts them: at the top level, each with its own version, in 0.4;
    under "ome" with the version once in 0.5. `extra` goes beside them (outside "ome")."""
    if version == "0.4":
        attrs = {k: [dict(m, version=version) for m in v] if isinstance(v, list) else dict(v, version=version)
                 for k, v in entries.items()}
    else:  # the plate also keeps its own version, as ome-zarr-py writes it (ome-zarr-models warns without)
        attrs = {"ome": {"version": version, **{k: dict(v, version=version) if k == "plate" else v
                                                 for k, v in entries.items()}}}
    attrs.update(extra or {})
    group.attrs.update(attrs)


def _create_array(group: Any, name: str, data: np.ndarray, version: str) -> None:
    import numcodecs
    from zarr.codecs import BloscCodec, BloscShuffle

    chunks = (1,) + data.shape[1:]
    if version == "0.4":  # Zarr v2: nested "/" chunk keys, as NGFF 0.4 requires
        arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks, fill_value=0,
                                 compressors=numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
                                 chunk_key_encoding={"name": "v2", "separator": "/"})
    else:  # Zarr v3: dimension_names must match the axes
        arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks, fill_value=0,
                                 compressors=BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.shuffle),
                                 dimension_names=("c", "y", "x"))
    arr[...] = data


def _write_field(well_group: Any, field: int, site: np.ndarray, layout: DatasetLayout, version: str,
                 levels: int) -> None:
    image = well_group.create_group(str(field))
    chw = np.ascontiguousarray(np.moveaxis(site, -1, 0))  # (H, W, C) -> (C, H, W)
    datasets = []
    for k in range(levels):
        step = 2 ** k
        _create_array(image, str(k), np.ascontiguousarray(chw[:, ::step, ::step]), version)
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, float(step), float(step)]}]})
    _set_ome(image, version, {"multiscales": [{"name": "image", "axes": AXES, "datasets": datasets}],
                              "omero": _omero(layout)})


def _plate_order(layout: DatasetLayout, wells: Iterable[str]) -> list[str]:
    rows = {r: i for i, r in enumerate(layout.plate.row_labels)}

    def key(w: str) -> tuple[int, int]:
        r, c = well_path(w).split("/")
        if r not in rows or not 1 <= int(c) <= layout.plate.columns:
            raise StoreError(f"well {w!r} lies outside the layout's {layout.plate.rows} x {layout.plate.columns} "
                             f"plate")
        return rows[r], int(c)
    return sorted(wells, key=key)


def _record(store: Store, name: str, sites: "pd.DataFrame", version: str, levels: int) -> dict[str, Any]:
    return {"store": str(Path(store.path).resolve()) if "://" not in str(store.path) else str(store.path),
            "store_created_at": store.attrs.get("created_at"), "plate": name, "version": version, "levels": levels,
            "sites": [f"{w}/{int(s)}" for w, s in zip(sites["well"], sites["site"])]}


def _write_plate(store: Store, name: str, sites: "pd.DataFrame", tmp: Path, version: str, levels: int,
                 record: dict[str, Any], bar: Any) -> int:
    import zarr

    layout = store.layout
    wells = _plate_order(layout, sites["well"].unique())
    root = zarr.open_group(str(tmp), mode="w", zarr_format=ZARR_FORMAT[version])
    fields = int(sites.groupby("well").size().max())
    plate = {"name": name, "field_count": fields,
             "rows": [{"name": r} for r in layout.plate.row_labels],
             "columns": [{"name": str(c)} for c in range(1, layout.plate.columns + 1)],
             "wells": []}
    row_index = {r: i for i, r in enumerate(layout.plate.row_labels)}
    for well in wells:
        r, c = well_path(well).split("/")
        plate["wells"].append({"path": f"{r}/{c}", "rowIndex": row_index[r], "columnIndex": int(c) - 1})
        mine = sites[sites["well"] == well].sort_values("site", kind="stable")
        pixels = store.read(mine.index.to_numpy())
        if pixels.dtype != layout.dtype:
            raise StoreError(f"{store.path}: sites read as {pixels.dtype}, the layout says {layout.pixel_dtype}")
        well_group = root.require_group(r).create_group(c)
        for f in range(len(mine)):
            _write_field(well_group, f, pixels[f], layout, version, levels)
            bar.update(1)
        _set_ome(well_group, version, {"well": {"images": [{"path": str(f)} for f in range(len(mine))]}})
    _set_ome(root, version, {"plate": plate}, extra={RECORD_KEY: record})
    validate_plate(zarr.open_group(str(tmp), mode="r"), version, str(tmp))  # MetadataError: nothing is renamed
    return len(wells)


def _finished_record(path: Path) -> dict[str, Any] | None:
    import zarr

    try:
        return dict(zarr.open_group(str(path), mode="r").attrs).get(RECORD_KEY)
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _select(store: Store, plates: Iterable[str] | None, wells: Iterable[str] | None) -> "pd.DataFrame":
    sites = store.sites.copy()
    sites["_plate"] = plate_names(sites).to_numpy()
    if plates is not None:
        plates = [str(p) for p in plates]
        unknown = sorted(set(plates) - set(sites["_plate"]))
        if unknown:
            raise ConfigError(f"plates={plates}: {unknown} not in {store.path}; its plates are "
                              f"{sorted(sites['_plate'].unique())}")
        sites = sites[sites["_plate"].isin(plates)]
    if wells is not None:
        try:
            wanted = {well_path(w) for w in wells}
        except MetadataError as exc:
            raise ConfigError(f"wells={list(wells)}: {exc}") from None
        have = sites["well"].map(well_path)
        unknown = sorted(w for w in wanted if w not in set(have))
        if unknown:
            raise ConfigError(f"wells={list(wells)}: {unknown} (as row/column) have no site in the selected plates "
                              f"of {store.path}")
        sites = sites[have.isin(wanted)]
    if sites.empty:
        raise ConfigError(f"{store.path}: the selection (plates={plates}, wells={wells}) holds no site")
    return sites


def export_ome_zarr(store: str | Path | Store, out: str | Path, *, plates: Iterable[str] | None = None,
                    wells: Iterable[str] | None = None, version: str = DEFAULT_VERSION, levels: int = 1,
                    overwrite: bool = False, progress: bool = True) -> ExportReport:
    """Write `store`'s sites (the `plates` named as `plate_names` names them, the `wells` "A01", ...; all by
    default) as OME-Zarr HCS plates under the directory `out` (module docstring). version: "0.4" (default) or
    "0.5"; levels: resolution levels per field (1 = full resolution only); overwrite: replace finished plates
    written from something else. ConfigError for a bad argument or a selection that names nothing; MetadataError
    when a written plate does not validate (then it is not renamed into place)."""
    from tqdm.auto import tqdm

    if version not in VERSIONS:
        raise ConfigError(f"version={version!r}: expected one of {list(VERSIONS)}")
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 8:
        raise ConfigError(f"levels={levels!r}: expected an integer in 1..8")
    store = store if isinstance(store, Store) else open_store(store)
    sites = _select(store, plates, wells)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done: list[ExportedPlate] = []
    groups = list(sites.groupby("_plate", sort=False))
    with tqdm(total=len(sites), unit="site", desc="export", disable=not progress) as bar:
        for name, mine in groups:
            if "/" in name or name.startswith("."):
                raise StoreError(f"plate name {name!r}: cannot name a directory (no '/' or leading '.')")
            final, tmp = out / f"{name}.ome.zarr", out / f".{name}.ome.zarr.partial"
            record = _record(store, name, mine, version, levels)
            if final.exists() and not overwrite:
                if _finished_record(final) != record:
                    raise StoreError(f"{final} exists and was not written from this store and selection (its "
                                     f"'{RECORD_KEY}' attribute differs); pass overwrite=True (--overwrite) to "
                                     f"replace it")
                log.info("%s: already exported, kept", final)
                done.append(ExportedPlate(name, str(final), int(mine["well"].nunique()), len(mine), True))
                bar.update(len(mine))
                continue
            if tmp.exists():
                log.info("%s: discarding a partial export from an earlier run", tmp)
                shutil.rmtree(tmp)
            n_wells = _write_plate(store, name, mine, tmp, version, levels, record, bar)
            if final.exists():  # overwrite: the old plate goes only once the new one is complete and valid
                old = out / f".{name}.ome.zarr.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old)
            else:
                os.replace(tmp, final)
            log.info("%s: %d wells, %d sites (OME-NGFF %s)", final, n_wells, len(mine), version)
            done.append(ExportedPlate(name, str(final), n_wells, len(mine), False))
    return ExportReport(str(out), version, tuple(done))
