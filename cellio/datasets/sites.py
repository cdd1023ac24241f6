"""The columns every site table has, whatever its data set (docs/data_format.md, "sites/"): a reader's table, and so
every store's, holds `id_code`, `dataset`, `experiment`, `cell_type`, `plate`, `well` (row label + two-digit
column, "A01", "AF48", a well of the layout's plate) and `site` (the field within the well, 1-based) beside the
layout's own columns. `check_site_table` holds a reader's table to that before anything is ingested."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from ..errors import MetadataError
from .layout import DatasetLayout

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SITE_TABLE_COLUMNS", "WELL_PATTERN", "check_site_table"]

SITE_TABLE_COLUMNS: tuple[str, ...] = ("id_code", "dataset", "experiment", "cell_type", "plate", "well", "site")
WELL_PATTERN = re.compile(r"([A-Z]{1,2})(\d{2})")
_SHOWN = 3  # bad rows named in a message


def _rows(mask: np.ndarray, values: "pd.Series") -> str:
    bad = np.flatnonzero(mask)
    shown = ", ".join(f"row {int(i)} = {values.iloc[int(i)]!r}" for i in bad[:_SHOWN])
    return shown + (f" ({len(bad)} rows in all)" if len(bad) > _SHOWN else "")


def check_site_table(table: "pd.DataFrame", layout: DatasetLayout, where: str) -> None:
    """MetadataError naming `where` (the raw data set), the column and the first bad rows unless `table` has every
    SITE_TABLE_COLUMNS column, wells of the layout's plate written row label + two-digit column, and integer sites
    in 1..layout.sites_per_well."""
    missing = [c for c in SITE_TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise MetadataError(f"{where}: the {layout.name} site table lacks the columns {missing}; every site table "
                            f"has {list(SITE_TABLE_COLUMNS)} (docs/data_format.md)")
    if table.empty:
        return
    wells = table["well"].astype(str)
    parts = wells.str.fullmatch(WELL_PATTERN.pattern)
    if not parts.all():
        raise MetadataError(f"{where}: column well: expected a row label and a two-digit column ('A01', 'AF48'), "
                            f"found {_rows(~parts.to_numpy(), table['well'])}")
    split = wells.str.extract(WELL_PATTERN.pattern)
    rows, cols = split[0], split[1].astype(np.int64)
    plate = layout.plate
    outside = ~rows.isin(plate.row_labels).to_numpy() | (cols < 1).to_numpy() | (cols > plate.columns).to_numpy()
    if outside.any():
        raise MetadataError(f"{where}: column well: expected wells of a {plate.rows}x{plate.columns} plate (rows "
                            f"{plate.row_labels[0]}..{plate.row_labels[-1]}, columns 01..{plate.columns:02d}), "
                            f"found {_rows(outside, table['well'])}")
    site = table["site"]
    if not np.issubdtype(site.dtype, np.integer):
        raise MetadataError(f"{where}: column site: expected integers (the field within the well), found dtype "
                            f"{site.dtype}")
    bad = ((site < 1) | (site > layout.sites_per_well)).to_numpy()
    if bad.any():
        raise MetadataError(f"{where}: column site: expected fields 1..{layout.sites_per_well} (sites_per_well of "
                            f"layout {layout.name!r}), found {_rows(bad, site)}")
