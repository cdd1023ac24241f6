"""What cellio needs of the OME-NGFF HCS layout (`ome/ngff` 0.4 and 0.5), shared by the plate reader and the export.

    plate group                 "plate": rows [{name}], columns [{name}], wells [{path "A/1", rowIndex, columnIndex}]
      {row}/{column}/           well group, "well": images [{path "0"}, ...]   (one per field of view)
        {field}/                image group, "multiscales": axes + datasets (highest resolution first), "omero"

NGFF 0.4 is Zarr v2 with the metadata at the top level of the group attributes (each entry with its own
"version"); 0.5 is Zarr v3 with everything under attributes["ome"] and "version" once. Column names are usually
unpadded numbers ("1"), so cellio's well "A01" is the path "A/1". docs/dataset_formats.md has the sources.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ...errors import MetadataError

__all__ = ["VERSIONS", "ZARR_FORMAT", "AXIS_NAMES", "ome_attributes", "plate_version", "well_name", "well_path",
           "hex_color", "rgb_of_hex"]

VERSIONS: tuple[str, ...] = ("0.4", "0.5")
ZARR_FORMAT: dict[str, int] = {"0.4": 2, "0.5": 3}
# the axes cellio reads, in the only order NGFF allows (time, channel, space z, y, x); t, c and z are optional
AXIS_NAMES: tuple[str, ...] = ("t", "c", "z", "y", "x")

_ROW = re.compile(r"[A-Z]{1,2}")
_COLUMN = re.compile(r"0*([1-9][0-9]*)")
_WELL = re.compile(r"([A-Za-z]{1,2})0*([1-9][0-9]*)")
_HEX = re.compile(r"[0-9A-Fa-f]{6}")


def ome_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The OME metadata of a group's attributes: attrs["ome"] (0.5) or the attributes themselves (0.4)."""
    ome = attrs.get("ome")
    return dict(ome) if isinstance(ome, Mapping) else dict(attrs)


def plate_version(attrs: Mapping[str, Any], where: str) -> str:
    """The NGFF version of a plate group from its attributes ("0.4" or "0.5"); MetadataError naming `where` for a
    group that is no plate or a version cellio does not read."""
    ome = ome_attributes(attrs)
    plate = ome.get("plate")
    if not isinstance(plate, Mapping):
        raise MetadataError(f"{where}: expected an OME-NGFF plate group (a 'plate' entry in its attributes, under "
                            f"'ome' for NGFF 0.5), found attribute keys {sorted(attrs)}")
    version = ome.get("version", plate.get("version"))
    if version not in VERSIONS:
        raise MetadataError(f"{where}: OME-NGFF version {version!r}; cellio reads plates of versions "
                            f"{list(VERSIONS)}")
    return str(version)


def well_name(path: str, where: str) -> str:
    """cellio's name of the well at plate path "A/1" (row letters + two-digit column): "A01"."""
    parts = path.split("/")
    if len(parts) != 2 or not _ROW.fullmatch(parts[0]) or not _COLUMN.fullmatch(parts[1]):
        raise MetadataError(f"{where}: well path {path!r}: expected ROW/COLUMN with one or two capital row letters "
                            f"and a column number (e.g. 'A/1' or 'AF/48')")
    return f"{parts[0]}{int(parts[1]):02d}"


def well_path(name: str) -> str:
    """The NGFF path of cellio's well "A01": "A/1" (unpadded column, as ome-zarr-py and the spec's examples)."""
    m = _WELL.fullmatch(str(name))
    if m is None:
        raise MetadataError(f"well {name!r}: expected row letters and a column number (e.g. 'A01')")
    return f"{m.group(1).upper()}/{int(m.group(2))}"


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "".join(f"{v:02X}" for v in rgb)


def rgb_of_hex(value: Any) -> tuple[int, int, int] | None:
    """(r, g, b) of an omero colour "RRGGBB", None when it is absent or not of that form."""
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        return None
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)
