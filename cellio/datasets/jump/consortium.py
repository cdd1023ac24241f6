"""The JUMP consortium's metadata tables (`jump-cellpainting/datasets` `metadata/`) joined onto the site table.

A metadata directory holds (each as `.csv.gz` or `.csv`; columns as `metadata/db/setup.sql` defines them):

    plate.csv.gz                Metadata_Source, Metadata_Batch, Metadata_Plate, Metadata_PlateType     required
    well.csv.gz                 Metadata_Source, Metadata_Plate, Metadata_Well, Metadata_JCP2022         required
    compound.csv.gz             Metadata_JCP2022, Metadata_InChIKey, Metadata_InChI, Metadata_SMILES     optional
    crispr.csv.gz               Metadata_JCP2022, Metadata_NCBI_Gene_ID, Metadata_Symbol                 optional
    orf.csv.gz                  Metadata_JCP2022, ..., Metadata_Symbol, ...                              optional
    perturbation_control.csv    Metadata_JCP2022, Metadata_pert_type (negcon/poscon/empty), Metadata_Name optional

Each site gets `jcp2022` (its well's Metadata_JCP2022, the label), `plate_type`, `modality` (compound / crispr /
orf: the table that lists the id, else "unknown"), `symbol` (CRISPR/ORF gene), `inchikey`, `smiles` (compounds),
and `well_type`: `negative_control` / `positive_control` / `empty` per perturbation_control.csv, else `treatment`.
The layout's vocabulary: the treatment ids of the chosen plates (n_treatments) and every control the table lists.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ...errors import MetadataError
from ..layout import ControlGroup, Perturbations
from .layout import LABEL_COLUMN

__all__ = ["PERTURBATION_COLUMNS", "WELL_TYPES", "join_metadata"]

log = logging.getLogger(__name__)

_COLUMNS: dict[str, tuple[str, ...]] = {
    "plate": ("Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_PlateType"),
    "well": ("Metadata_Source", "Metadata_Plate", "Metadata_Well", "Metadata_JCP2022"),
    "compound": ("Metadata_JCP2022", "Metadata_InChIKey", "Metadata_SMILES"),
    "crispr": ("Metadata_JCP2022", "Metadata_Symbol"),
    "orf": ("Metadata_JCP2022", "Metadata_Symbol"),
    "perturbation_control": ("Metadata_JCP2022", "Metadata_pert_type"),
}
_REQUIRED_TABLES = ("plate", "well")
# perturbation_control's Metadata_pert_type -> the site table's well_type
WELL_TYPES: dict[str, str] = {"negcon": "negative_control", "poscon": "positive_control", "empty": "empty"}
PERTURBATION_COLUMNS: tuple[str, ...] = ("plate_type", "modality", "symbol", "inchikey", "smiles")


def _table(directory: Path, name: str) -> pd.DataFrame | None:
    for suffix in (".csv.gz", ".csv"):
        path = directory / f"{name}{suffix}"
        if path.is_file():
            break
    else:
        if name in _REQUIRED_TABLES:
            raise MetadataError(f"{directory}: no {name}.csv.gz (or {name}.csv); expected the consortium's metadata "
                                "directory (jump-cellpainting/datasets metadata/)")
        log.info("%s: no %s table; its columns stay empty", directory, name)
        return None
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise MetadataError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in _COLUMNS[name] if c not in frame.columns]
    if missing:
        raise MetadataError(f"{path}: missing columns {missing}; expected {list(_COLUMNS[name])}, found "
                            f"{list(frame.columns)}")
    return frame


def join_metadata(table: pd.DataFrame, directory: str | Path) -> tuple[pd.DataFrame, Perturbations]:
    """`table` (the load_data site table) with its wells' perturbations from the tables in `directory`, and the
    layout's Perturbations. MetadataError naming the file and the plate/well it lacks."""
    directory = Path(directory)
    plates = _table(directory, "plate")
    wells = _table(directory, "well")
    assert plates is not None and wells is not None  # required tables raise above
    chosen = set(table["plate"])
    plate_type = plates.drop_duplicates("Metadata_Plate").set_index("Metadata_Plate")["Metadata_PlateType"]
    absent = sorted(chosen - set(plate_type.index))
    if absent:
        raise MetadataError(f"{directory / 'plate.csv.gz'}: plates {absent} are not listed; expected every chosen "
                            "plate (choose plates the table has)")
    wells = wells[wells["Metadata_Plate"].isin(chosen)]
    dup = wells.duplicated(["Metadata_Plate", "Metadata_Well"])
    if dup.any():
        row = wells[dup].iloc[0]
        raise MetadataError(f"{directory}: well table lists plate {row['Metadata_Plate']} well "
                            f"{row['Metadata_Well']} more than once; expected one perturbation per well")
    jcp = wells.set_index(["Metadata_Plate", "Metadata_Well"])["Metadata_JCP2022"]
    key = pd.MultiIndex.from_arrays([table["plate"], table["well"]])
    ids = jcp.reindex(key)
    if ids.isna().any():
        where = key[ids.isna().to_numpy()]
        raise MetadataError(f"{directory}: the well table has no row for plate {where[0][0]} well {where[0][1]} "
                            f"({int(ids.isna().sum())} sites without one); expected every imaged well")
    out = table.copy()
    out[LABEL_COLUMN] = ids.to_numpy()
    out["plate_type"] = out["plate"].map(plate_type)
    out["modality"] = "unknown"
    out["symbol"] = ""
    out["inchikey"] = ""
    out["smiles"] = ""
    compound = _table(directory, "compound")
    if compound is not None:
        c = compound.drop_duplicates("Metadata_JCP2022").set_index("Metadata_JCP2022")
        hit = out[LABEL_COLUMN].isin(c.index)
        out.loc[hit, "modality"] = "compound"
        out.loc[hit, "inchikey"] = out.loc[hit, LABEL_COLUMN].map(c["Metadata_InChIKey"])
        out.loc[hit, "smiles"] = out.loc[hit, LABEL_COLUMN].map(c["Metadata_SMILES"])
    for name in ("crispr", "orf"):
        genes = _table(directory, name)
        if genes is None:
            continue
        g = genes.drop_duplicates("Metadata_JCP2022").set_index("Metadata_JCP2022")
        hit = out[LABEL_COLUMN].isin(g.index)
        out.loc[hit, "modality"] = name
        out.loc[hit, "symbol"] = out.loc[hit, LABEL_COLUMN].map(g["Metadata_Symbol"])
    controls = _table(directory, "perturbation_control")
    kinds = (pd.Series(dtype=str) if controls is None else
             controls.drop_duplicates("Metadata_JCP2022").set_index("Metadata_JCP2022")["Metadata_pert_type"])
    bad = sorted(set(kinds) - set(WELL_TYPES))
    if bad:
        raise MetadataError(f"{directory / 'perturbation_control.csv'}: Metadata_pert_type {bad}; expected "
                            f"{list(WELL_TYPES)}")
    out["well_type"] = out[LABEL_COLUMN].map(kinds).map(WELL_TYPES).fillna("treatment")
    groups = tuple(ControlGroup(well_type, tuple(sorted(kinds.index[kinds == pert_type])))
                   for pert_type, well_type in WELL_TYPES.items() if (kinds == pert_type).any())
    treatments = out.loc[out["well_type"] == "treatment", LABEL_COLUMN].nunique()
    perturbations = Perturbations(label_column=LABEL_COLUMN, n_treatments=int(treatments), label_kind="str",
                                  controls=groups, well_type_column="well_type", treatment_well_type="treatment",
                                  columns=PERTURBATION_COLUMNS)
    return out, perturbations
