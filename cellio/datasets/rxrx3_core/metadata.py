"""`metadata_rxrx3_core.csv` into the validated well table (one row per well, the site table's descriptive columns).

Every bad row is reported at once (MetadataError naming file, row, line, column, found vs expected): a well id that
is not `{experiment_name}_{plate}_{address}`, an address outside the 1,536-well plate, a perturbation type, a CRISPR
well without a gene, a compound well without a concentration, a repeated well.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from ...errors import MetadataError
from ..checks import Problems, check_columns, float_column, int_column, read_text_csv
from .layout import CONTROLS, METADATA_COLUMNS, METADATA_FILE, PERTURBATION_TYPES, RXRX3_CORE

__all__ = ["read_wells", "parse_address", "WELL_COLUMNS"]

# the well table's columns (the site table's, before the images' shard and row columns)
WELL_COLUMNS = ("id_code", "dataset", "experiment", "cell_type", "plate", "well", "site", "well_type", "perturbation",
                "perturbation_type", "gene", "treatment", "SMILES", "concentration")
_ROWS = {label: i for i, label in enumerate(RXRX3_CORE.plate.row_labels)}
_ADDRESS = re.compile(r"([A-Z]{1,2})(\d{2})")


def parse_address(address: str) -> tuple[int, int] | None:
    """'AF48' -> (31, 48): the 0-based row and 1-based column of a 1,536-well address, or None if it is not one."""
    m = _ADDRESS.fullmatch(address)
    if m is None or m.group(1) not in _ROWS or not 1 <= int(m.group(2)) <= RXRX3_CORE.plate.columns:
        return None
    return _ROWS[m.group(1)], int(m.group(2))


def read_wells(fs: Any, root: str, where: str) -> pd.DataFrame:
    """The validated well table of the copy at `root` on `fs` (`where` names it in messages)."""
    label = METADATA_FILE
    path = f"{root}/{METADATA_FILE}"
    if not fs.isfile(path):
        raise MetadataError(f"{where}: {METADATA_FILE} not found; expected a copy of the Hugging Face repository "
                            f"recursionpharma/rxrx3-core ({METADATA_FILE} and data/train-*.parquet)")
    with fs.open(path, "rb") as f:
        df = read_text_csv(f, f"{where}/{label}")
    check_columns(df, f"{where}/{label}", METADATA_COLUMNS)
    problems = Problems("RxRx3-core metadata")
    text = {c: df[c].str.strip() for c in METADATA_COLUMNS}
    plate = int_column(df, "plate", label, problems, 1, 10**6)
    bad = np.array([parse_address(a) is None for a in text["address"]], dtype=bool)
    problems.add_rows(label, np.flatnonzero(bad), "address", df["address"][bad],
                      "a 1,536-well address (rows A..Z, AA..AF; columns 01..48), e.g. 'AF48'")
    expected_id = text["experiment_name"] + "_" + plate.astype(str) + "_" + text["address"]
    bad_id = plate.notna() & (text["well_id"] != expected_id)
    problems.add_rows(label, np.flatnonzero(bad_id.to_numpy()), "well_id", df["well_id"][bad_id],
                      "'{experiment_name}_{plate}_{address}'")
    dup = text["well_id"].duplicated()
    problems.add_rows(label, np.flatnonzero(dup.to_numpy()), "well_id", df["well_id"][dup], "a unique well_id")
    for col in ("experiment_name", "treatment", "cell_type"):
        empty = text[col] == ""
        problems.add_rows(label, np.flatnonzero(empty.to_numpy()), col, df[col][empty], "a non-empty value")
    ptype = text["perturbation_type"]
    bad_type = ~ptype.isin(PERTURBATION_TYPES)
    problems.add_rows(label, np.flatnonzero(bad_type.to_numpy()), "perturbation_type", df["perturbation_type"][bad_type],
                      f"one of {list(PERTURBATION_TYPES)}")
    control = text["treatment"].isin(list(CONTROLS))
    no_gene = (ptype == "CRISPR") & ~control & (text["gene"] == "")
    problems.add_rows(label, np.flatnonzero(no_gene.to_numpy()), "gene", df["gene"][no_gene],
                      "a gene symbol (a CRISPR well)")
    compound = (ptype == "COMPOUND") & ~control
    concentration = float_column(df, "concentration", label, problems, required=compound)
    problems.raise_if_any(where)

    well_type = text["treatment"].map(CONTROLS).fillna(RXRX3_CORE.perturbations.treatment_well_type)
    perturbation = text["treatment"].where(control | (ptype == "COMPOUND"), text["gene"])
    return pd.DataFrame({
        "id_code": text["well_id"].astype(str), "dataset": "train", "experiment": text["experiment_name"].astype(str),
        "cell_type": text["cell_type"].astype(str), "plate": plate.astype(np.int64),
        "well": text["address"].astype(str), "site": np.ones(len(df), dtype=np.int64),
        "well_type": well_type.astype(str), "perturbation": perturbation.astype(str),
        "perturbation_type": ptype.astype(str), "gene": text["gene"].astype(str),
        "treatment": text["treatment"].astype(str), "SMILES": text["SMILES"].astype(str),
        "concentration": concentration,
    }, columns=list(WELL_COLUMNS))
