"""RxRx2's metadata CSV into the validated site table (one row per site, a `path_w*` column per channel).

Every bad row is reported at once (MetadataError naming file, row, line, column, found vs expected): an experiment
not `{cell_type}-{n}`, a well outside the 1,536-well plate, a site outside 1..4, ids that do not follow
`{experiment}_{plate}_{well}[_{site}]`, a repeated site, a treated well without a concentration, a well whose sites
disagree on the treatment.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import MetadataError
from ..checks import Problems, check_columns, float_column, int_column, read_text_csv
from .layout import METADATA_COLUMNS, METADATA_FILES, RXRX2, SITE_COLUMNS, UNTREATED

__all__ = ["metadata_file", "read_metadata"]

log = logging.getLogger(__name__)

_EXPERIMENT = re.compile(r"([A-Za-z0-9]+)-\d+")
_ROWS = frozenset(RXRX2.plate.row_labels)
_WELL = re.compile(r"([A-Z]{1,2})(\d{2})")


def metadata_file(raw: Path) -> Path | None:
    """The metadata CSV of an RxRx2 directory (rxrx2-metadata.csv, else metadata.csv), or None."""
    for name in METADATA_FILES:
        if (raw / name).is_file():
            return raw / name
    return None


def _is_well(well: str) -> bool:
    m = _WELL.fullmatch(well)
    return m is not None and m.group(1) in _ROWS and 1 <= int(m.group(2)) <= RXRX2.plate.columns


def read_metadata(raw_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The validated site table of the RxRx2 directory `raw_dir`, sorted by experiment, plate, well, site."""
    raw = Path(raw_dir).resolve()
    path = metadata_file(raw)
    if path is None:
        raise MetadataError(f"{raw}: no RxRx2 metadata file; expected one of {list(METADATA_FILES)} beside images/")
    label = path.name
    df = read_text_csv(str(path), str(path))
    check_columns(df, str(path), METADATA_COLUMNS)
    problems = Problems("RxRx2 metadata")
    text = {c: df[c].str.strip() for c in METADATA_COLUMNS}
    m = text["experiment"].str.extract(f"^{_EXPERIMENT.pattern}$")[0]
    bad = m.isna()
    problems.add_rows(label, np.flatnonzero(bad.to_numpy()), "experiment", df["experiment"][bad],
                      "'{cell_type}-{number}', e.g. 'HUVEC-1'")
    bad = m.notna() & (m != text["cell_type"])
    problems.add_rows(label, np.flatnonzero(bad.to_numpy()), "cell_type", df["cell_type"][bad],
                      "the text before '-' in experiment")
    plate = int_column(df, "plate", label, problems, 1, 10**6)
    site = int_column(df, "site", label, problems, 1, RXRX2.sites_per_well)
    bad = ~text["well"].map(_is_well).astype(bool)
    problems.add_rows(label, np.flatnonzero(bad.to_numpy()), "well", df["well"][bad],
                      "a 1,536-well address (rows A..Z, AA..AF; columns 01..48), e.g. 'AA02'")
    well_id = text["experiment"] + "_" + plate.astype(str) + "_" + text["well"]
    bad = plate.notna() & (text["well_id"] != well_id)
    problems.add_rows(label, np.flatnonzero(bad.to_numpy()), "well_id", df["well_id"][bad],
                      "'{experiment}_{plate}_{well}'")
    bad = site.notna() & (text["site_id"] != text["well_id"] + "_" + site.astype(str))
    problems.add_rows(label, np.flatnonzero(bad.to_numpy()), "site_id", df["site_id"][bad], "'{well_id}_{site}'")
    bad = text["site_id"].duplicated()
    problems.add_rows(label, np.flatnonzero(bad.to_numpy()), "site_id", df["site_id"][bad], "a unique site_id")
    treated = text["treatment"] != ""
    conc = float_column(df, "treatment_conc", label, problems, required=treated)
    per_well = pd.DataFrame({"w": text["well_id"], "t": text["treatment"], "c": conc.fillna(-1.0)})
    disagree = per_well.groupby("w")[["t", "c"]].transform("nunique").max(axis=1) > 1
    problems.add_rows(label, np.flatnonzero(disagree.to_numpy()), "treatment", df["treatment"][disagree],
                      "the same treatment and treatment_conc on every site of the well")
    problems.raise_if_any(str(raw))

    table = pd.DataFrame({
        "id_code": text["well_id"].astype(str), "dataset": "train", "experiment": text["experiment"].astype(str),
        "cell_type": text["cell_type"].astype(str), "plate": plate.astype(np.int64), "well": text["well"].astype(str),
        "site": site.astype(np.int64),
        "well_type": np.where(treated, RXRX2.perturbations.treatment_well_type, UNTREATED),
        "treatment": text["treatment"].astype(str), "treatment_conc": conc,
    })
    stem = ("images/" + table["experiment"] + "/Plate" + table["plate"].astype(str) + "/" + table["well"] + "_s"
            + table["site"].astype(str) + "_w")
    for c, col in enumerate(RXRX2.path_columns, start=1):
        table[col] = stem + f"{c}.png"
    table = table.sort_values(["experiment", "plate", "well", "site"], kind="stable").reset_index(drop=True)
    return table[list(SITE_COLUMNS)]
