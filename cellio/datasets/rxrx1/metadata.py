"""RxRx1 metadata: the Kaggle CSVs (or the later rxrx.ai `metadata.csv`) into one validated site table.

    sites = read_metadata("data/rxrx1")          # one row per site, columns SITE_COLUMNS (layout.py)

The plate groups derived from it are in plate_groups.py.

Every check is vectorised (the real set has 125k sites and 753k pixel_stats rows) and every problem is reported
with its file, 1-based data row (line = row + 1, the header is line 1), column, value and what was expected.
Several problems are collected and the first few are reported together with the total count. See docs/rxrx1.md.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import MetadataError
from ..checks import Problems
from .layout import (
    RXRX1,
    ALL_WELLS,
    CELL_TYPES,
    CHANNELS,
    DATASETS,
    N_TREATMENTS,
    NEGATIVE_CONTROL_SIRNA,
    PATH_COLUMNS,
    PIXEL_MEAN_COLUMNS,
    PIXEL_STD_COLUMNS,
    PLATES,
    POSITIVE_CONTROL_SIRNAS,
    SITE_COLUMNS,
    SITES,
    WellType,
)

__all__ = ["read_metadata", "MAX_REPORTED_PROBLEMS"]

log = logging.getLogger(__name__)

MAX_REPORTED_PROBLEMS = 8

_WELL_COLUMNS = ["id_code", "experiment", "plate", "well"]
KAGGLE_COLUMNS: dict[str, list[str]] = {
    "train.csv": [*_WELL_COLUMNS, "sirna"],
    "test.csv": list(_WELL_COLUMNS),
    "train_controls.csv": [*_WELL_COLUMNS, "sirna", "well_type"],
    "test_controls.csv": [*_WELL_COLUMNS, "sirna", "well_type"],
    "sample_submission.csv": ["id_code", "sirna"],
}
PIXEL_STATS_REQUIRED = ["id_code", "experiment", "plate", "well", "site", "channel", "mean", "std"]
PIXEL_STATS_OPTIONAL = ["median", "min", "max"]
RXRX_AI_COLUMNS = ["site_id", "well_id", "cell_type", "dataset", "experiment", "plate", "well", "site",
                   "well_type", "sirna", "sirna_id"]

_EXPERIMENT_RE = r"^[A-Za-z0-9]+-\d{2,}$"
_IMAGE_RE = re.compile(r"^([A-Z]\d{2})_s(\d+)_w(\d+)\.png$")


def _read_csv(path: Path, label: str) -> pd.DataFrame:
    """Read every column as text (we validate types ourselves, with row numbers)."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        raise MetadataError(f"{label}: file not found at {path}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise MetadataError(f"{label}: not a readable CSV ({exc})") from None


def _check_columns(df: pd.DataFrame, label: str, required: list[str], optional: list[str] = ()) -> None:
    cols = list(df.columns)
    missing = [c for c in required if c not in cols]
    extra = [c for c in cols if c not in required and c not in optional]
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if missing or extra or dup:
        parts = []
        if missing:
            parts.append(f"missing column(s) {missing}")
        if extra:
            parts.append(f"unexpected column(s) {extra}")
        if dup:
            parts.append(f"duplicated column(s) {dup}")
        raise MetadataError(f"{label} (header, line 1): {'; '.join(parts)}; expected columns {required}"
                            + (f" (optional {list(optional)})" if optional else "") + f", found {cols}")


def _int_column(df: pd.DataFrame, col: str, label: str, problems: Problems, lo: int, hi: int,
                what: str | None = None) -> pd.Series:
    """Parse a text column as integers in [lo, hi]; bad rows are reported and become <NA>."""
    text = df[col].str.strip()
    ok = text.str.fullmatch(r"[+-]?\d+(\.0*)?")
    num = pd.to_numeric(text.where(ok), errors="coerce")
    bad_type = ~ok
    problems.add_rows(label, np.flatnonzero(bad_type.to_numpy()), col, df[col][bad_type], "an integer")
    out_of_range = ok & ((num < lo) | (num > hi))
    problems.add_rows(label, np.flatnonzero(out_of_range.to_numpy()), col, df[col][out_of_range],
                      what or f"an integer in {lo}..{hi}")
    return num.where(ok & ~out_of_range).astype("Int64")


def _validate_wells(df: pd.DataFrame, label: str, problems: Problems, *, id_col: str = "id_code",
                    unique: bool = True) -> pd.DataFrame:
    """Common checks of the id_code/experiment/plate/well columns (`id_col` holds the id_code; `unique`: one row
    per well); returns a typed frame with cell_type."""
    out = pd.DataFrame(index=df.index)
    for col in (id_col, "experiment", "plate", "well"):
        empty = df[col].str.strip() == ""
        problems.add_rows(label, np.flatnonzero(empty.to_numpy()), col, df[col][empty], "a non-empty value")
    exp = df["experiment"].str.strip()
    bad_exp = ~exp.str.fullmatch(_EXPERIMENT_RE)
    problems.add_rows(label, np.flatnonzero(bad_exp.to_numpy()), "experiment", df["experiment"][bad_exp],
                      "CELLTYPE-NN, e.g. 'HUVEC-07'")
    cell_type = exp.str.split("-", n=1).str[0]
    bad_ct = ~bad_exp & ~cell_type.isin(CELL_TYPES)
    problems.add_rows(label, np.flatnonzero(bad_ct.to_numpy()), "experiment", df["experiment"][bad_ct],
                      f"a cell type in {list(CELL_TYPES)} before '-'")
    plate = _int_column(df, "plate", label, problems, PLATES[0], PLATES[-1], f"a plate number in {PLATES[0]}..{PLATES[-1]}")
    well = df["well"].str.strip()
    bad_well = ~well.isin(ALL_WELLS) & (well != "")
    problems.add_rows(label, np.flatnonzero(bad_well.to_numpy()), "well", df["well"][bad_well],
                      f"a well in {ALL_WELLS[0]}..{ALL_WELLS[-1]} (rows B-O, columns 02-23)")
    expected_id = exp + "_" + plate.astype(str) + "_" + well
    checkable = ~bad_exp & ~bad_ct & plate.notna() & ~bad_well
    bad_id = checkable & (df[id_col].str.strip() != expected_id)
    problems.add_rows(label, np.flatnonzero(bad_id.to_numpy()), id_col, df[id_col][bad_id],
                      "'{experiment}_{plate}_{well}' = " + expected_id[bad_id].map(repr))
    if unique:
        dup = df[id_col].duplicated(keep="first")
        problems.add_rows(label, np.flatnonzero(dup.to_numpy()), id_col, df[id_col][dup],
                          f"a unique {id_col} (duplicate of an earlier row)")
    out["id_code"] = df[id_col].str.strip()
    out["experiment"] = exp
    out["cell_type"] = cell_type
    out["plate"] = plate
    out["well"] = well
    return out


def _kaggle_wells(raw: Path, problems: Problems) -> tuple[pd.DataFrame, set[str] | None]:
    """The Kaggle CSVs into one frame per well: id_code, dataset, experiment, cell_type, plate, well,
    well_type, sirna. Also returns the test id_codes of sample_submission.csv (None when absent)."""
    missing = [f for f in ("train.csv", "test.csv", "train_controls.csv", "test_controls.csv")
               if not (raw / f).is_file()]
    if missing:
        raise MetadataError(f"{raw}: missing RxRx1 metadata file(s) {missing}; expected the Kaggle files "
                            "train.csv, test.csv, train_controls.csv, test_controls.csv (and optionally "
                            "sample_submission.csv, pixel_stats.csv)")
    frames: dict[str, pd.DataFrame] = {}
    for name in ("train.csv", "test.csv", "train_controls.csv", "test_controls.csv"):
        df = _read_csv(raw / name, name)
        _check_columns(df, name, KAGGLE_COLUMNS[name])
        typed = _validate_wells(df, name, problems)
        typed["dataset"] = name.split("_")[0].split(".")[0]
        typed["src_file"] = name
        typed["src_row"] = np.arange(len(df))
        if name.endswith("_controls.csv"):
            wt = df["well_type"].str.strip()
            bad = ~wt.isin([WellType.NEGATIVE_CONTROL.value, WellType.POSITIVE_CONTROL.value])
            problems.add_rows(name, np.flatnonzero(bad.to_numpy()), "well_type", df["well_type"][bad],
                              "'negative_control' or 'positive_control'")
            sirna = _int_column(df, "sirna", name, problems, 0, NEGATIVE_CONTROL_SIRNA)
            neg = wt == WellType.NEGATIVE_CONTROL.value
            pos = wt == WellType.POSITIVE_CONTROL.value
            bad_neg = neg & sirna.notna() & (sirna != NEGATIVE_CONTROL_SIRNA)
            problems.add_rows(name, np.flatnonzero(bad_neg.to_numpy()), "sirna", df["sirna"][bad_neg],
                              f"{NEGATIVE_CONTROL_SIRNA} for a negative_control")
            bad_pos = pos & sirna.notna() & ~sirna.isin(POSITIVE_CONTROL_SIRNAS)
            problems.add_rows(name, np.flatnonzero(bad_pos.to_numpy()), "sirna", df["sirna"][bad_pos],
                              f"{POSITIVE_CONTROL_SIRNAS[0]}..{POSITIVE_CONTROL_SIRNAS[-1]} for a positive_control")
            typed["well_type"] = wt
            typed["sirna"] = sirna
        else:
            typed["well_type"] = WellType.TREATMENT.value
            if "sirna" in df.columns:
                typed["sirna"] = _int_column(df, "sirna", name, problems, 0, N_TREATMENTS - 1,
                                             f"a treatment siRNA id in 0..{N_TREATMENTS - 1}")
            else:
                typed["sirna"] = pd.array([pd.NA] * len(df), dtype="Int64")
        frames[name] = typed

    test_ids_all = set(frames["test.csv"]["id_code"])  # sample_submission.csv lists all of test.csv
    # A well listed both as a treatment and as a control: the controls file wins (its well_type and sirna);
    # a different sirna for the same id_code is a real conflict.
    for treat_name, ctrl_name in (("train.csv", "train_controls.csv"), ("test.csv", "test_controls.csv")):
        t, c = frames[treat_name], frames[ctrl_name]
        both = t["id_code"].isin(c["id_code"])
        if both.any():
            merged = t.loc[both, ["id_code", "sirna", "src_row"]].merge(c[["id_code", "sirna"]], on="id_code",
                                                                    suffixes=("", "_ctrl"))
            conflict = merged["sirna"].notna() & (merged["sirna"] != merged["sirna_ctrl"])
            for r in merged[conflict].itertuples(index=False):
                problems.add(f"{treat_name} row {r.src_row + 1} (line {r.src_row + 2}), column 'sirna': id_code "
                             f"{r.id_code!r} has sirna {r.sirna} but {ctrl_name} lists it with sirna {r.sirna_ctrl}")
            log.info("%d well(s) of %s are also in %s; the controls file wins", int(both.sum()), treat_name, ctrl_name)
            frames[treat_name] = t[~both]

    wells = pd.concat(list(frames.values()), ignore_index=True)
    # The same id_code across files (other than the treatment/control overlap handled above).
    dup = wells["id_code"].duplicated(keep="first") & wells["id_code"].ne("")
    for r in wells[dup].head(MAX_REPORTED_PROBLEMS).itertuples(index=False):
        first = wells[wells["id_code"] == r.id_code].iloc[0]
        problems.add(f"{r.src_file} row {r.src_row + 1} (line {r.src_row + 2}), column 'id_code': {r.id_code!r} also "
                     f"appears in {first['src_file']} row {first['src_row'] + 1}; expected each well once")
    problems.count += max(int(dup.sum()) - MAX_REPORTED_PROBLEMS, 0)
    # An experiment is either train or test.
    ds_per_exp = wells.groupby("experiment")["dataset"].nunique()
    for exp in ds_per_exp[ds_per_exp > 1].index[:MAX_REPORTED_PROBLEMS]:
        problems.add(f"experiment {exp!r} appears in both train and test files; expected each experiment in one")

    sub_ids: set[str] | None = None
    if (raw / "sample_submission.csv").is_file():
        sub = _read_csv(raw / "sample_submission.csv", "sample_submission.csv")
        _check_columns(sub, "sample_submission.csv", KAGGLE_COLUMNS["sample_submission.csv"])
        ids = sub["id_code"].str.strip()
        unknown = ~ids.isin(test_ids_all)
        problems.add_rows("sample_submission.csv", np.flatnonzero(unknown.to_numpy()), "id_code", sub["id_code"][unknown],
                          "an id_code listed in test.csv")
        dup = ids.duplicated()
        problems.add_rows("sample_submission.csv", np.flatnonzero(dup.to_numpy()), "id_code", sub["id_code"][dup],
                          "a unique id_code")
        absent = sorted(test_ids_all - set(ids))
        if absent:
            problems.add(f"sample_submission.csv: {len(absent)} test.csv id_code(s) have no row, e.g. {absent[:3]}")
        sub_ids = set(ids)
    return wells.drop(columns=["src_file", "src_row"]), sub_ids


def _rxrx_ai_wells(raw: Path, problems: Problems) -> pd.DataFrame:
    """The rxrx.ai `metadata.csv` (one row per site) into the well frame plus a `site` column."""
    name = "metadata.csv"
    df = _read_csv(raw / name, name)
    _check_columns(df, name, RXRX_AI_COLUMNS)
    typed = _validate_wells(df, name, problems, id_col="well_id", unique=False)
    typed["dataset"] = df["dataset"].str.strip()
    bad = ~typed["dataset"].isin(DATASETS)
    problems.add_rows(name, np.flatnonzero(bad.to_numpy()), "dataset", df["dataset"][bad], f"one of {list(DATASETS)}")
    ct_mismatch = df["cell_type"].str.strip() != typed["cell_type"]
    problems.add_rows(name, np.flatnonzero(ct_mismatch.to_numpy()), "cell_type", df["cell_type"][ct_mismatch],
                      "the text before '-' in experiment")
    typed["site"] = _int_column(df, "site", name, problems, 1, 99)
    bad_site_id = typed["site"].notna() & (df["site_id"].str.strip() != typed["id_code"] + "_" + typed["site"].astype(str))
    problems.add_rows(name, np.flatnonzero(bad_site_id.to_numpy()), "site_id", df["site_id"][bad_site_id],
                      "'{well_id}_{site}'")
    dup = df["site_id"].duplicated()
    problems.add_rows(name, np.flatnonzero(dup.to_numpy()), "site_id", df["site_id"][dup], "a unique site_id")
    wt = df["well_type"].str.strip()
    bad_wt = ~wt.isin([w.value for w in WellType])
    problems.add_rows(name, np.flatnonzero(bad_wt.to_numpy()), "well_type", df["well_type"][bad_wt],
                      f"one of {[w.value for w in WellType]}")
    typed["well_type"] = wt
    typed["sirna"] = _int_column(df, "sirna_id", name, problems, 0, NEGATIVE_CONTROL_SIRNA)
    return typed


def _sites_from_files(raw: Path, plate_dirs: pd.Series) -> pd.DataFrame:
    """The sites that have at least one image file, listing each plate directory once: (id_code, site)."""
    found: list[tuple[str, int]] = []
    for d in plate_dirs.unique():
        try:
            names = [e.name for e in os.scandir(raw / d)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        _, exp, plate = d.rsplit("/", 2)
        stem = f"{exp}_{plate.removeprefix('Plate')}_"
        for n in names:
            m = _IMAGE_RE.match(n)
            if m:
                found.append((stem + m.group(1), int(m.group(2))))
    return pd.DataFrame(found, columns=["id_code", "site"]).drop_duplicates()


def _read_pixel_stats(raw: Path, problems: Problems) -> pd.DataFrame | None:
    """pixel_stats.csv (or .csv.zip) -> one row per (id_code, site) with pixel_mean_w*/pixel_std_w*."""
    for name in ("pixel_stats.csv", "pixel_stats.csv.zip"):
        if (raw / name).is_file():
            break
    else:
        return None
    try:
        df = pd.read_csv(raw / name, dtype={"id_code": str, "experiment": str, "well": str}, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise MetadataError(f"{name}: not a readable CSV ({exc})") from None
    _check_columns(df, name, PIXEL_STATS_REQUIRED, PIXEL_STATS_OPTIONAL)
    n_before = problems.count
    for col, lo, hi in (("plate", 1, 4), ("site", 1, 99), ("channel", CHANNELS[0], CHANNELS[-1])):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() | (num != num.round()) | (num < lo) | (num > hi)
        problems.add_rows(name, np.flatnonzero(bad.to_numpy()), col, df[col][bad], f"an integer in {lo}..{hi}")
        df[col] = num
    for col in ("mean", "std"):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() | (num < 0) | (num > 255)
        problems.add_rows(name, np.flatnonzero(bad.to_numpy()), col, df[col][bad], "a number in 0..255")
        df[col] = num.astype(np.float64)
    expected_id = df["experiment"] + "_" + df["plate"].astype("Int64").astype(str) + "_" + df["well"]
    bad_id = df["id_code"] != expected_id
    problems.add_rows(name, np.flatnonzero(bad_id.to_numpy()), "id_code", df["id_code"][bad_id],
                      "'{experiment}_{plate}_{well}' = " + expected_id[bad_id].map(repr))
    dup = df.duplicated(["id_code", "site", "channel"])
    problems.add_rows(name, np.flatnonzero(dup.to_numpy()), "channel", df["channel"][dup],
                      "one row per id_code, site and channel (duplicate)")
    if problems.count > n_before:
        return None
    df["site"] = df["site"].astype(np.int64)
    df["channel"] = df["channel"].astype(np.int64)
    wide = df.pivot(index=["id_code", "site"], columns="channel", values=["mean", "std"])
    out = pd.DataFrame(index=wide.index)
    for c, mcol, scol in zip(CHANNELS, PIXEL_MEAN_COLUMNS, PIXEL_STD_COLUMNS):
        out[mcol] = wide[("mean", c)] if ("mean", c) in wide.columns else np.nan
        out[scol] = wide[("std", c)] if ("std", c) in wide.columns else np.nan
    incomplete = out.isna().any(axis=1)
    for (idc, site) in out.index[incomplete][:MAX_REPORTED_PROBLEMS]:
        problems.add(f"{name}: id_code {idc!r} site {site} lacks some of channels {list(CHANNELS)}")
    problems.count += max(int(incomplete.sum()) - MAX_REPORTED_PROBLEMS, 0)
    return out.reset_index()


def read_metadata(raw_dir: str | os.PathLike[str], *, check_files: bool = False,
                  pixel_stats: bool = True) -> pd.DataFrame:
    """Read and validate the RxRx1 metadata under `raw_dir` into the site table (docs/architecture.md).

    Sites per well come from pixel_stats.csv when present (and `pixel_stats`), else from the image files when
    their plate directories exist, else `SITES` (layout.py). `check_files=True` also requires every channel image of
    every site to exist (one directory listing per plate). Raises MetadataError listing the problems found.
    """
    raw = Path(raw_dir).resolve()
    if not raw.is_dir():
        raise MetadataError(f"RxRx1 data directory not found: {raw}")
    problems = Problems("RxRx1 metadata", limit=MAX_REPORTED_PROBLEMS)
    rxrx_ai = not (raw / "train.csv").is_file() and not (raw / "test.csv").is_file() and (raw / "metadata.csv").is_file()
    if rxrx_ai:
        per_site = _rxrx_ai_wells(raw, problems)
        problems.raise_if_any(str(raw))
        per_site = per_site.assign(site=per_site["site"].astype(np.int64), plate=per_site["plate"].astype(np.int64))
        folder = "images/" + per_site["experiment"] + "/Plate" + per_site["plate"].astype(str)
        sites = per_site
        stats = None
    else:
        wells, _ = _kaggle_wells(raw, problems)
        problems.raise_if_any(str(raw))
        wells["plate"] = wells["plate"].astype(np.int64)
        folder = wells["dataset"] + "/" + wells["experiment"] + "/Plate" + wells["plate"].astype(str)
        stats = _read_pixel_stats(raw, problems) if pixel_stats else None
        problems.raise_if_any(str(raw))
        if stats is not None:
            site_ids = stats[["id_code", "site"]]
            unknown = ~site_ids["id_code"].isin(wells["id_code"])
            for idc in site_ids.loc[unknown, "id_code"].unique()[:MAX_REPORTED_PROBLEMS]:
                problems.add(f"pixel_stats.csv: id_code {idc!r} is in no train/test/controls CSV")
            no_stats = ~wells["id_code"].isin(site_ids["id_code"])
            for idc in wells.loc[no_stats, "id_code"].head(MAX_REPORTED_PROBLEMS):
                problems.add(f"pixel_stats.csv: no rows for id_code {idc!r} (listed in the CSVs)")
            problems.count += max(int(no_stats.sum()) - MAX_REPORTED_PROBLEMS, 0)
            problems.raise_if_any(str(raw))
            sites = wells.merge(site_ids, on="id_code", how="inner")
        else:
            found = _sites_from_files(raw, folder)
            if len(found):
                has = wells["id_code"].isin(found["id_code"])
                sites = pd.concat([
                    wells[has].merge(found, on="id_code", how="inner"),
                    wells[~has].merge(pd.DataFrame({"site": list(SITES)}), how="cross"),
                ], ignore_index=True)
            else:
                sites = wells.merge(pd.DataFrame({"site": list(SITES)}), how="cross")
        folder = sites["dataset"] + "/" + sites["experiment"] + "/Plate" + sites["plate"].astype(str)

    stem = folder + "/" + sites["well"] + "_s" + sites["site"].astype(str) + "_w"
    table = pd.DataFrame({
        "id_code": sites["id_code"].astype(str), "dataset": sites["dataset"].astype(str),
        "experiment": sites["experiment"].astype(str), "cell_type": sites["cell_type"].astype(str),
        "plate": sites["plate"].astype(np.int64), "well": sites["well"].astype(str),
        "site": sites["site"].astype(np.int64), "well_type": sites["well_type"].astype(str),
        "sirna": sites["sirna"].astype("Int64"),
    })
    for c, col in zip(CHANNELS, PATH_COLUMNS):
        table[col] = (stem + f"{c}.png").astype(str)
    if stats is not None:
        table = table.merge(stats, on=["id_code", "site"], how="left")
    else:
        for col in (*PIXEL_MEAN_COLUMNS, *PIXEL_STD_COLUMNS):
            table[col] = np.nan
    for col in (*PIXEL_MEAN_COLUMNS, *PIXEL_STD_COLUMNS):
        table[col] = table[col].astype(np.float64)

    order = pd.Categorical(table["dataset"], categories=list(DATASETS), ordered=True)
    table = (table.assign(_ds=order).sort_values(["_ds", "experiment", "plate", "well", "site"], kind="stable")
             .drop(columns="_ds").reset_index(drop=True))
    table = table[list(SITE_COLUMNS)]

    if check_files:
        _check_files(raw, table, problems)
        problems.raise_if_any(str(raw))
    table.attrs["raw_dir"] = str(raw)
    table.attrs["layout"] = RXRX1  # what a loader's filters check against (cellio.select_sites)
    log.info("read %d sites (%d wells, %d experiments) from %s", len(table), table["id_code"].nunique(),
             table["experiment"].nunique(), raw)
    return table


def _check_files(raw: Path, table: pd.DataFrame, problems: Problems) -> None:
    """Every path_w* must exist: one directory listing per plate folder, then a set difference."""
    expected = pd.concat([table[col] for col in PATH_COLUMNS], ignore_index=True)
    folders = expected.str.rsplit("/", n=1).str[0].unique()
    present: set[str] = set()
    for d in folders:
        try:
            present.update(f"{d}/{e.name}" for e in os.scandir(raw / d))
        except (FileNotFoundError, NotADirectoryError):
            pass
    missing = expected[~expected.isin(present)]
    for p in missing.head(MAX_REPORTED_PROBLEMS):
        problems.add(f"missing image file {p} (under {raw})")
    problems.count += max(len(missing) - MAX_REPORTED_PROBLEMS, 0)
