"""OME-Zarr HCS plates as cellio reads them: `READER` (registered as "ome-zarr") and `ome_zarr_reader(plate, ...)`.

SRC is one plate group (`.../plate1.ome.zarr`). Its layout comes from the plate itself (`layout.py`), so the
registered READER is unbound: `READER.bind(src)` (or `ome_zarr_reader(src, perturbations=..., z=...)`) gives the
reader whose `layout` is that plate's. The site table has a row per field of view:

    id_code "{plate}_{well}", dataset "train", experiment and plate (the plate's name), cell_type, well ("A01"),
    site (the field's index in the well's image list + 1: 1-based, as every site table), well_type, perturbation (+ the table's other
    columns), array_path (the field's level-0 array, "A/1/0/0"), axes ("cyx", "tczyx", ...), z_plane (the Z index
    read, <NA> without a z axis), path_c0..path_cN (the array path, per channel: the files the site comes from)

`read_site(src, row)` reads that array with the zarr API (Zarr v2 for NGFF 0.4, v3 for 0.5): T = 0, Z = the row's
z_plane (the middle plane unless the user chose one), every channel, and returns (H, W, C) in the plate's dtype.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ImageError, MetadataError
from ..layout import Channel, DatasetLayout, IdFormats, Perturbations, PlateGeometry
from ..reader import DatasetReader
from .layout import LABEL_COLUMN, NAME, TREATMENT, UNKNOWN_CELL_TYPE, plate_layout, read_perturbations
from .ngff import ome_attributes
from .plate import OmeField, OmePlate, read_plate

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["READER", "UNBOUND_LAYOUT", "ome_zarr_reader", "read_sites", "read_site", "is_raw_dir", "z_plane"]

SOURCE_KIND = "ome-zarr-hcs"
RAW_DESCRIPTION = "an OME-Zarr HCS plate group (OME-NGFF 0.4 or 0.5: a 'plate' in its .zattrs or zarr.json)"


def z_plane(field: OmeField, z: int | None, where: str) -> int | None:
    """The Z index read from `field`: None without a z axis, `z` when given (MetadataError when out of range),
    else the middle plane (size // 2: the focal plane of a stack centred on focus)."""
    size = field.size("z")
    if size is None:
        return None
    if z is None:
        return size // 2
    if not 0 <= z < size:
        raise MetadataError(f"{where}/{field.path}: z={z}: expected a plane index in 0..{size - 1}")
    return z


def _table(plate: OmePlate, perturbations: "pd.DataFrame | None", z: int | None) -> "pd.DataFrame":
    import pandas as pd

    per_well = None if perturbations is None else perturbations.set_index("well")
    extra = [] if per_well is None else [c for c in per_well.columns if c not in (LABEL_COLUMN, "well_type",
                                                                                   "cell_type")]
    keys = [f"c{i}" for i in range(plate.n_channels)]
    rows = []
    for well in plate.wells:
        info = None if per_well is None else per_well.loc[well.name]
        for site, field in enumerate(well.fields, start=1):  # sites are 1-based in every site table (sites.py)
            zi = z_plane(field, z, plate.path)
            row: dict[str, Any] = {
                "id_code": f"{plate.name}_{well.name}", "dataset": "train", "experiment": plate.name,
                "cell_type": UNKNOWN_CELL_TYPE if info is None else info["cell_type"], "plate": plate.name,
                "well": well.name, "site": site, "well_type": TREATMENT if info is None else info["well_type"],
                LABEL_COLUMN: pd.NA if info is None else info[LABEL_COLUMN],
                **({} if info is None else {c: info[c] for c in extra}),
                "array_path": field.array_path, "axes": field.axes, "z_plane": pd.NA if zi is None else zi}
            row.update({f"path_{k}": field.array_path for k in keys})
            rows.append(row)
    table = pd.DataFrame(rows)
    table[LABEL_COLUMN] = table[LABEL_COLUMN].astype("string")
    return table.astype({"site": "int64", "z_plane": "Int64"})


def read_sites(raw: Path | str, perturbations: str | Path | None = None, z: int | None = None) -> "pd.DataFrame":
    """The site table of the plate group `raw` (module docstring); `perturbations` the user's CSV
    (`layout.read_perturbations`), `z` the Z plane to read (default: each stack's middle plane).
    `attrs["layout"]` is the plate's layout, `attrs["raw_dir"]` the plate path."""
    plate = read_plate(raw)
    table = None if perturbations is None else read_perturbations(perturbations, plate)
    sites = _table(plate, table, z)
    sites.attrs["raw_dir"] = str(Path(raw).resolve()) if "://" not in str(raw) else str(raw)
    sites.attrs["layout"] = plate_layout(plate, table)
    return sites


@functools.lru_cache(maxsize=16)
def _root(raw: str) -> Any:
    import zarr

    return zarr.open_group(raw, mode="r")  # a worker keeps its plates open (read_site runs once per site)


def read_site(raw: str, row: Mapping[str, Any]) -> "np.ndarray":
    """The (H, W, C) pixels of one site-table row: its array at T = 0 and Z = z_plane, every channel, the array's
    dtype. ImageError naming the array for one that is missing, unreadable or of an unexpected shape."""
    import numpy as np

    path, axes = str(row["array_path"]), str(row["axes"])
    where = f"{raw}/{path}"
    try:
        arr = _root(str(raw))[path]
    except (KeyError, FileNotFoundError, ValueError) as exc:
        raise ImageError(f"{where}: the site's array is missing or unreadable ({exc})") from exc
    if len(arr.shape) != len(axes):
        raise ImageError(f"{where}: expected a {len(axes)}-d array (axes {list(axes)}), found shape {arr.shape}")
    z = row.get("z_plane")
    index = tuple(0 if a == "t" else int(z) if a == "z" else slice(None) for a in axes)
    try:
        data = np.asarray(arr[index])
    except Exception as exc:  # a chunk that does not decode: zarr/numcodecs raise several types
        raise ImageError(f"{where}: reading the site failed ({type(exc).__name__}: {exc})") from exc
    site = np.moveaxis(data, 0, -1) if "c" in axes else data[..., None]
    return np.ascontiguousarray(site)


def is_raw_dir(path: Path) -> bool:
    """A directory that is a Zarr group whose attributes hold an OME-NGFF plate (reads one small JSON file)."""
    import json

    path = Path(path)
    for name, attrs_of in ((".zattrs", lambda d: d), ("zarr.json", lambda d: d.get("attributes", {}))):
        try:
            doc = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(attrs_of(doc), dict) and "plate" in ome_attributes(attrs_of(doc)):
            return True
    return False


def ome_zarr_reader(plate: str | Path, perturbations: str | Path | None = None, z: int | None = None) \
        -> DatasetReader:
    """The reader of the plate group `plate`, its layout built from the plate (and the perturbation table), for
    `cellio.ingest(plate, store, reader=ome_zarr_reader(plate, perturbations="plate1.perturbations.csv"))`."""
    plate_info = read_plate(plate)
    table = None if perturbations is None else read_perturbations(perturbations, plate_info)
    return DatasetReader(layout=plate_layout(plate_info, table), source_kind=SOURCE_KIND,
                         read_sites=functools.partial(read_sites, perturbations=perturbations, z=z),
                         is_raw_dir=is_raw_dir, raw_description=RAW_DESCRIPTION, read_site=read_site)


def bind_plate(plate: str | Path, metadata: str | Path | None = None, channels: Any = None) -> DatasetReader:
    """The registered reader bound to the plate group `plate` (`cellio ingest PLATE STORE --from ome-zarr
    [--metadata perturbations.csv]`). `channels` is not needed here: a field's array holds every channel, so the
    bound layout has them all and the ingest picks the ones it keeps."""
    return ome_zarr_reader(plate, perturbations=metadata)


# What is known of an OME-Zarr plate before one is opened: nothing but the name. The registered reader carries it
# because a DatasetReader has a layout; `bind` replaces it by the plate's own (ingest must bind before it reads).
UNBOUND_LAYOUT = DatasetLayout(
    name=NAME, version=1, channels=(Channel("c0", "c0"),), pixel_dtype="uint16", site_shape=(1, 1),
    sites_per_well=1, plate=PlateGeometry(1, 1), perturbations=Perturbations(LABEL_COLUMN, 1, label_kind="str"),
    cell_types=(UNKNOWN_CELL_TYPE,), ids=IdFormats(well="{plate}_{well}", site="{plate}_{well}_{site}"),
    description="unbound: an OME-Zarr plate's layout is read from the plate (READER.bind(path))")

READER = DatasetReader(layout=UNBOUND_LAYOUT, source_kind=SOURCE_KIND, read_sites=read_sites, is_raw_dir=is_raw_dir,
                       raw_description=RAW_DESCRIPTION, read_site=read_site, bind=bind_plate)
