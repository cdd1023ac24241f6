"""An OME-Zarr HCS plate's structure, validated: `read_plate(path) -> OmePlate` (no pixels are read).

The metadata must validate with ome-zarr-models (`models.validate_plate`); then every well the plate lists must
exist, every field of every well must hold a level-0 array (datasets[0] of its multiscales: the highest
resolution) with the axes cellio reads (t, c, z optional; y and x last), and all fields must agree in channel count,
pixel type (uint8 or uint16) and Y x X size, since a cellio store holds one site shape. Each disagreement is a
MetadataError naming the plate, the well or field and what was expected vs found.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import MetadataError
from ..layout import PIXEL_DTYPES
from .models import validate_plate
from .ngff import AXIS_NAMES, ZARR_FORMAT, ome_attributes, plate_version, rgb_of_hex, well_name

__all__ = ["OmeChannel", "OmeField", "OmeWell", "OmePlate", "read_plate", "open_plate_group"]


@dataclass(frozen=True)
class OmeChannel:
    """A channel as the plate's omero metadata describes it (label c0, c1, ... without omero)."""

    label: str
    color: tuple[int, int, int] | None = None       # None: no colour, or the channel is not active
    window: tuple[float, float] | None = None       # omero window (start, end)


@dataclass(frozen=True)
class OmeField:
    """One field of view: its image group ("A/1/0"), level-0 array ("A/1/0/s0"), axes ("cyx", "tczyx") and shape."""

    path: str
    array_path: str
    axes: str
    shape: tuple[int, ...]
    dtype: str

    def size(self, axis: str) -> int | None:
        return self.shape[self.axes.index(axis)] if axis in self.axes else None

    @property
    def n_channels(self) -> int:
        return self.size("c") or 1

    @property
    def yx(self) -> tuple[int, int]:
        return self.shape[-2], self.shape[-1]


@dataclass(frozen=True)
class OmeWell:
    path: str                       # "A/1"
    name: str                       # "A01"
    fields: tuple[OmeField, ...]


@dataclass(frozen=True)
class OmePlate:
    path: str
    version: str                    # "0.4" | "0.5"
    name: str                       # the plate metadata's name, else the group's directory name
    rows: tuple[str, ...]           # row names as listed ("A", "B", ...)
    columns: tuple[int, ...]        # column numbers as listed
    wells: tuple[OmeWell, ...]      # in the plate metadata's order
    channels: tuple[OmeChannel, ...]

    @property
    def fields(self) -> tuple[OmeField, ...]:
        return tuple(f for w in self.wells for f in w.fields)

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def dtype(self) -> str:
        return self.fields[0].dtype

    @property
    def site_shape(self) -> tuple[int, int]:
        return self.fields[0].yx


def open_plate_group(path: str | Path) -> Any:
    """The zarr group at `path`, read-only (MetadataError when there is none)."""
    import zarr

    try:
        return zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, ValueError, KeyError) as exc:  # zarr: GroupNotFoundError is a FileNotFoundError
        raise MetadataError(f"{path}: expected an OME-Zarr plate (a Zarr group), found none ({exc})") from exc


def _plate_name(meta: Mapping[str, Any], path: str) -> str:
    name = meta.get("name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    stem = Path(str(path).rstrip("/")).name
    for suffix in (".ome.zarr", ".zarr"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)] or stem
    return stem


def _columns(meta: Mapping[str, Any], where: str) -> tuple[int, ...]:
    out = []
    for c in meta["columns"]:
        name = str(c["name"])
        if not name.isdigit() or int(name) < 1:
            raise MetadataError(f"{where}: plate column {name!r}: expected a column number (1, 2, ... or 01, 02)")
        out.append(int(name))
    return tuple(out)


def _field(root: Any, image_path: str, version: str, where: str) -> OmeField:
    if image_path not in root:
        raise MetadataError(f"{where}/{image_path}: the well lists this field but its image group is missing")
    ome = ome_attributes(root[image_path].attrs)
    multiscales = ome.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales or not multiscales[0].get("datasets"):
        raise MetadataError(f"{where}/{image_path}: expected 'multiscales' metadata with at least one dataset")
    ms = multiscales[0]
    axes = "".join(str(a["name"] if isinstance(a, Mapping) else a) for a in ms["axes"])
    if axes != "".join(n for n in AXIS_NAMES if n in axes) or not axes.endswith("yx"):  # unknown, repeated, order
        raise MetadataError(f"{where}/{image_path}: axes {list(axes)}: expected y, x last, optionally after t, c, z "
                            f"in that order (cellio reads {list(AXIS_NAMES)})")
    array_path = f"{image_path}/{ms['datasets'][0]['path']}"  # datasets[0]: the highest resolution
    if array_path not in root:
        raise MetadataError(f"{where}/{array_path}: the multiscales' first dataset is missing")
    arr = root[array_path]
    if not hasattr(arr, "shape") or len(arr.shape) != len(axes):
        raise MetadataError(f"{where}/{array_path}: expected a {len(axes)}-d array for axes {list(axes)}, found "
                            f"{getattr(arr, 'shape', 'a group')}")
    if arr.metadata.zarr_format != ZARR_FORMAT[version]:
        raise MetadataError(f"{where}/{array_path}: NGFF {version} arrays are Zarr v{ZARR_FORMAT[version]}, found "
                            f"v{arr.metadata.zarr_format}")
    dtype = str(arr.dtype)
    if dtype not in PIXEL_DTYPES:
        raise MetadataError(f"{where}/{array_path}: pixel type {dtype}; cellio reads {list(PIXEL_DTYPES)}")
    return OmeField(image_path, array_path, axes, tuple(int(s) for s in arr.shape), dtype)


def _channels(root: Any, first: OmeField, where: str) -> tuple[OmeChannel, ...]:
    omero = ome_attributes(root[first.path].attrs).get("omero")
    listed = omero.get("channels") if isinstance(omero, Mapping) else None
    if not listed:
        return tuple(OmeChannel(f"c{i}") for i in range(first.n_channels))
    if len(listed) != first.n_channels:
        raise MetadataError(f"{where}/{first.path}: omero metadata lists {len(listed)} channels, the array has "
                            f"{first.n_channels}")
    out = []
    for i, ch in enumerate(listed):
        label = str(ch.get("label") or f"c{i}")
        window = ch.get("window") if isinstance(ch.get("window"), Mapping) else {}
        span = (window.get("start"), window.get("end"))
        active = ch.get("active", True) is not False
        out.append(OmeChannel(label, rgb_of_hex(ch.get("color")) if active else None,
                              tuple(float(v) for v in span) if all(isinstance(v, (int, float)) for v in span)
                              else None))
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise MetadataError(f"{where}/{first.path}: omero channel labels {labels}: expected distinct labels")
    return tuple(out)


def read_plate(path: str | Path) -> OmePlate:
    """The validated structure of the OME-Zarr HCS plate group at `path` (see the module docstring)."""
    where = str(path)
    root = open_plate_group(path)
    version = plate_version(root.attrs, where)
    if root.metadata.zarr_format != ZARR_FORMAT[version]:
        raise MetadataError(f"{where}: NGFF {version} plates are Zarr v{ZARR_FORMAT[version]}, found a "
                            f"Zarr v{root.metadata.zarr_format} group")
    validate_plate(root, version, where)
    meta = ome_attributes(root.attrs)["plate"]
    rows = tuple(str(r["name"]) for r in meta["rows"])
    columns = _columns(meta, where)
    wells = []
    for entry in meta["wells"]:
        wpath = str(entry["path"])
        name = well_name(wpath, where)
        if wpath not in root:
            raise MetadataError(f"{where}: well {name} ({wpath}) is listed in the plate metadata but its group "
                                f"{where}/{wpath} is missing")
        images = ome_attributes(root[wpath].attrs).get("well", {}).get("images") or []
        if not images:
            raise MetadataError(f"{where}/{wpath}: well {name} lists no images (fields of view)")
        fields = tuple(_field(root, f"{wpath}/{im['path']}", version, where) for im in images)
        wells.append(OmeWell(wpath, name, fields))
    if not wells:
        raise MetadataError(f"{where}: the plate lists no wells")
    first = wells[0].fields[0]
    for well in wells:
        for f in well.fields:
            for what, mine, ref in (("channel count", f.n_channels, first.n_channels),
                                    ("pixel type", f.dtype, first.dtype), ("Y x X size", f.yx, first.yx)):
                if mine != ref:
                    raise MetadataError(
                        f"{where}: the plate's wells disagree in {what}: well {well.name} field {f.path} has "
                        f"{mine}, well {wells[0].name} field {first.path} has {ref} (a cellio store holds one "
                        f"channel set, pixel type and site shape)")
    return OmePlate(where, version, _plate_name(meta, where), rows, columns, tuple(wells),
                    _channels(root, first, where))
