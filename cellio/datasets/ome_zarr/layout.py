"""The layout of one OME-Zarr plate, built from the plate (`plate_layout`), and the user's perturbation table.

Channels: the omero labels (c0, c1, ... without omero), keyed c0..cN (labels may hold any character); tint and
window from omero (a channel without a colour, or inactive, is left out of the composite). Pixel type, site shape:
the level-0 arrays'. Plate geometry: rows up to the last listed row letter, columns up to the last listed column
number, the listed ones used. Fields per well: the most any well has.

Perturbations come from a table the user gives (`read_perturbations`): a CSV with columns `plate`, `well` and
`perturbation`, optionally `perturbation_type` (or `well_type`), `cell_type` and any others (a concentration, a
guide), carried into the site table. Rows are matched on the plate's name and well ("A01" or "A1"). A well whose
type is one of CONTROL_TYPES is a control of that kind; every other well is a treatment. Without a table every
well is a treatment with an unknown (missing) label.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import MetadataError
from ..layout import (Channel, ControlGroup, DatasetLayout, IdFormats, Perturbations, PlateGeometry, row_label)
from .ngff import well_path
from .plate import OmePlate

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["NAME", "LABEL_COLUMN", "TYPE_COLUMNS", "CONTROL_TYPES", "UNKNOWN_CELL_TYPE", "read_perturbations",
           "plate_layout"]

NAME = "ome-zarr"
LABEL_COLUMN = "perturbation"
TYPE_COLUMNS = ("perturbation_type", "well_type")  # the table's column naming a well's kind (the first present)
CONTROL_TYPES = ("control", "negative_control", "positive_control", "negcon", "poscon", "empty")
UNKNOWN_CELL_TYPE = "unknown"
TREATMENT = "treatment"


def read_perturbations(csv: str | Path, plate: OmePlate) -> "pd.DataFrame":
    """The rows of the table `csv` for `plate`, one per well of the plate: columns well (A01), perturbation,
    well_type, cell_type and the table's other columns. MetadataError naming the file for a missing column, no row
    of this plate, a well given twice or a well of the plate the table does not have."""
    import pandas as pd

    try:
        table = pd.read_csv(csv, dtype={"plate": str, "well": str})
    except (OSError, ValueError) as exc:
        raise MetadataError(f"{csv}: cannot read the perturbation table ({exc})") from exc
    missing = [c for c in ("plate", "well", LABEL_COLUMN) if c not in table.columns]
    if missing:
        raise MetadataError(f"{csv}: expected columns plate, well, {LABEL_COLUMN} (and optionally "
                            f"{', '.join(TYPE_COLUMNS)}, cell_type, ...); missing {missing}, found {list(table.columns)}")
    mine = table[table["plate"].astype(str).str.strip() == plate.name].copy()
    if mine.empty:
        raise MetadataError(f"{csv}: no row for plate {plate.name!r} ({plate.path}); the table's plates are "
                            f"{sorted(table['plate'].astype(str).unique())[:20]}")
    try:
        mine["well"] = [_well(w) for w in mine["well"]]
    except MetadataError as exc:
        raise MetadataError(f"{csv}: {exc}") from None
    dup = sorted(mine.loc[mine["well"].duplicated(), "well"].unique())
    if dup:
        raise MetadataError(f"{csv}: plate {plate.name!r}: wells {dup} appear more than once")
    absent = [w.name for w in plate.wells if w.name not in set(mine["well"])]
    if absent:
        raise MetadataError(f"{csv}: plate {plate.name!r}: no row for wells {absent} of the plate")
    kind = next((c for c in TYPE_COLUMNS if c in mine.columns), None)
    types = mine[kind].astype("string").str.strip() if kind else pd.Series(TREATMENT, index=mine.index)
    mine["well_type"] = [t if isinstance(t, str) and t in CONTROL_TYPES else TREATMENT for t in types.fillna("")]
    if kind and kind != "well_type":
        mine[kind] = types
    if "cell_type" not in mine.columns:
        mine["cell_type"] = UNKNOWN_CELL_TYPE
    mine["cell_type"] = mine["cell_type"].astype("string").fillna(UNKNOWN_CELL_TYPE).astype(str)
    mine[LABEL_COLUMN] = mine[LABEL_COLUMN].astype("string")
    wells = [w.name for w in plate.wells]
    return mine.drop(columns=["plate"]).set_index("well").loc[wells].reset_index()


def _well(value: object) -> str:
    row, col = well_path(str(value).strip()).split("/")
    return f"{row}{int(col):02d}"


def _channel(i: int, label: str, color: tuple[int, int, int] | None, window: tuple[float, float] | None,
             top: int) -> Channel:
    if color is None:
        return Channel(label, f"c{i}")
    lo, hi = (0, top) if window is None else (max(0, int(window[0])), min(top, int(round(window[1]))))
    if lo >= hi:
        lo, hi = 0, top
    return Channel(label, f"c{i}", color, (lo, hi))


def _geometry(plate: OmePlate) -> PlateGeometry:
    index = {row_label(i): i for i in range(32 * 26)}  # up to 'AF' and beyond: all two-letter labels we name
    bad = [r for r in plate.rows if r not in index]
    if bad:
        raise MetadataError(f"{plate.path}: plate rows {bad}: expected row letters (A..Z, AA..)")
    rows = max(index[r] for r in plate.rows) + 1
    return PlateGeometry(rows, max(plate.columns), used_rows=tuple(sorted(plate.rows, key=index.__getitem__)),
                         used_columns=tuple(sorted(plate.columns)))


def plate_layout(plate: OmePlate, perturbations: "pd.DataFrame | None" = None) -> DatasetLayout:
    """The DatasetLayout of `plate` (see the module docstring); `perturbations` from `read_perturbations`."""
    import numpy as np

    top = int(np.iinfo(plate.dtype).max)
    channels = tuple(_channel(i, c.label, c.color, c.window, top) for i, c in enumerate(plate.channels))
    if perturbations is None:
        perturbations_ = Perturbations(LABEL_COLUMN, 1, label_kind="str")
        cell_types: tuple[str, ...] = (UNKNOWN_CELL_TYPE,)
    else:
        treated = perturbations["well_type"] == TREATMENT
        labels = perturbations[LABEL_COLUMN]
        controls = tuple(ControlGroup(t, tuple(sorted(labels[perturbations["well_type"] == t].dropna().unique())))
                         for t in CONTROL_TYPES if ((perturbations["well_type"] == t) & labels.notna()).any())
        extra = tuple(c for c in perturbations.columns if c not in ("well", LABEL_COLUMN, "well_type", "cell_type"))
        perturbations_ = Perturbations(LABEL_COLUMN, max(1, int(labels[treated].nunique())), label_kind="str",
                                       controls=controls, columns=extra)
        cell_types = tuple(sorted(perturbations["cell_type"].unique()))
    return DatasetLayout(
        name=NAME, version=1, channels=channels, pixel_dtype=plate.dtype, site_shape=plate.site_shape,
        sites_per_well=max(len(w.fields) for w in plate.wells), plate=_geometry(plate),
        perturbations=perturbations_, cell_types=cell_types, splits=("train",),
        ids=IdFormats(well="{plate}_{well}", site="{plate}_{well}_{site}"),
        description=f"OME-Zarr HCS plate {plate.name!r} (OME-NGFF {plate.version})")
