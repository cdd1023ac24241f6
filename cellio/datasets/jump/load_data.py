"""The per-plate `load_data` CSVs of a cpg0016 mirror: where they are, their two column forms, and the site table
they make (one row per field, each channel's TIFF and illumination function as a path relative to the mirror).

A mirror is the folder that holds `source_*/` (a local copy of `s3://cellpainting-gallery/cpg0016-jump/`, or that
prefix itself). Each plate has

    <source>/workspace/load_data_csv/<batch>/<plate>/load_data.csv[.gz]             the images
    <source>/workspace/load_data_csv/<batch>/<plate>/load_data_with_illum.csv[.gz]  + the illumination functions

with either `FileName_Orig<Ch>` + `PathName_Orig<Ch>` pairs or `URL_Orig<Ch>` columns (and `..._Illum<Ch>` in the
second file), and `Metadata_Plate`, `Metadata_Well`, `Metadata_Site`. The `_with_illum` file is read when there is
one (it names the illumination functions); otherwise `load_data` and the gallery's own place for them,
`<source>/images/<batch>/illum/<plate>/<plate>_Illum<Ch>.npy`. URLs under `s3://cellpainting-gallery/cpg0016-jump/`
(or under the mirror's own URL) become paths relative to the mirror.
"""
from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ...errors import MetadataError
from .layout import CELL_TYPE, CHANNELS, ROWS_384

__all__ = ["LOAD_DATA_NAMES", "PlateFile", "find_plates", "read_plate", "site_table"]

log = logging.getLogger(__name__)

# the file read for a plate, in order of preference (the first that exists)
LOAD_DATA_NAMES: tuple[str, ...] = ("load_data_with_illum.csv", "load_data_with_illum.csv.gz", "load_data.csv",
                                    "load_data.csv.gz")
_CHANNEL_COLUMN = re.compile(r"^(FileName|PathName|URL)_(Orig|Illum)(.+)$")
_WELL = re.compile(r"^([A-Za-z])(\d{1,2})$")
_REQUIRED = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")


@dataclass(frozen=True)
class PlateFile:
    """One plate's load_data file: `path` relative to the mirror, and the source, batch and plate its folder
    names (`<source>/workspace/load_data_csv/<batch>/<plate>/<name>`)."""

    path: str
    source: str
    batch: str
    plate: str

    @property
    def illum_dir(self) -> str:
        """Where the gallery keeps the plate's illumination functions (relative to the mirror)."""
        return f"{self.source}/images/{self.batch}/illum/{self.plate}"


def _names(fs: Any, path: str) -> list[str]:
    """The entries' names directly under `path` ([] when it does not exist): one listing, never a recursive walk
    (on the gallery a walk below a source would list every image)."""
    try:
        return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def find_plates(fs: Any, root: str, sources: Iterable[str] | None = None,
                plates: Iterable[str] | None = None) -> list[PlateFile]:
    """Each plate's load_data file under the mirror `root` (fsspec `fs` path), sorted by source, batch, plate;
    restricted to `sources` / `plates` when given (MetadataError naming the ones not found). Lists only
    `<source>/workspace/load_data_csv/<batch>/<plate>/`: a listing per source, batch and chosen plate."""
    base = root.rstrip("/")
    present = [s for s in _names(fs, base) if s.startswith("source_")]
    if sources:
        missing = sorted(set(sources) - set(present))
        if missing:
            raise MetadataError(f"sources {missing}: not under {base}; found {present}")
    wanted = set(plates) if plates is not None else None
    out = []
    for source in (sorted(set(sources)) if sources else present):
        csvs = f"{base}/{source}/workspace/load_data_csv"
        for batch in _names(fs, csvs):
            for plate in _names(fs, f"{csvs}/{batch}"):
                if wanted is not None and plate not in wanted:
                    continue
                names = set(_names(fs, f"{csvs}/{batch}/{plate}"))
                name = next((n for n in LOAD_DATA_NAMES if n in names), None)
                if name is not None:
                    out.append(PlateFile(f"{source}/workspace/load_data_csv/{batch}/{plate}/{name}", source, batch,
                                         plate))
    if wanted is not None:
        missing = sorted(wanted - {p.plate for p in out})
        if missing:
            raise MetadataError(f"plates {missing}: no load_data file for them under {base}/<source>/workspace/"
                                f"load_data_csv/<batch>/<plate>/ ({len(out)} of the chosen plates found)")
    if not out:
        raise MetadataError(f"{base}: no load_data.csv(.gz) under <source>/workspace/load_data_csv/<batch>/<plate>/; "
                            "expected a mirror of s3://cellpainting-gallery/cpg0016-jump/ (the folder of source_*/)")
    return out


def _relative(url: str, prefixes: tuple[str, ...], where: str) -> str:
    for prefix in prefixes:
        if url.startswith(prefix):
            return url[len(prefix):]
    raise MetadataError(f"{where}: expected a URL under {' or '.join(prefixes)}, found {url!r}")


def _channel_columns(frame: pd.DataFrame, file: str) -> dict[str, dict[str, dict[str, str]]]:
    """kind ("Orig"/"Illum") -> channel -> {"URL"|"FileName"|"PathName": column}; MetadataError for a channel
    JUMP does not have or a FileName without its PathName."""
    out: dict[str, dict[str, dict[str, str]]] = {"Orig": {}, "Illum": {}}
    for col in frame.columns:
        m = _CHANNEL_COLUMN.match(col)
        if m is None:
            continue
        form, kind, channel = m.groups()
        if channel not in CHANNELS:
            raise MetadataError(f"{file}: column {col!r} names channel {channel!r}; expected one of {list(CHANNELS)}")
        out[kind].setdefault(channel, {})[form] = col
    for kind, chans in out.items():
        for channel, forms in chans.items():
            if "URL" not in forms and not {"FileName", "PathName"} <= set(forms):
                raise MetadataError(f"{file}: channel {channel!r} has {sorted(forms.values())} but not its pair; "
                                    f"expected URL_{kind}{channel} or both FileName_{kind}{channel} and "
                                    f"PathName_{kind}{channel}")
    return out


def _urls(frame: pd.DataFrame, forms: dict[str, str]) -> pd.Series:
    if "URL" in forms:
        return frame[forms["URL"]]
    return frame[forms["PathName"]].str.rstrip("/") + "/" + frame[forms["FileName"]]


def read_plate(fs: Any, root: str, plate: PlateFile, channels: tuple[str, ...], illumination: bool,
               prefixes: tuple[str, ...]) -> pd.DataFrame:
    """The sites of one plate's load_data file: source, batch, plate, well ("A01"), site, load_data, load_data_line
    and a `path_<Ch>` (+ `illum_<Ch>` when `illumination`) per channel, paths relative to the mirror."""
    file = plate.path
    compression = "gzip" if file.endswith(".gz") else None
    try:
        with fs.open(f"{root.rstrip('/')}/{file}", "rb") as f:
            frame = pd.read_csv(f, dtype=str, keep_default_na=False, compression=compression)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise MetadataError(f"{file}: not a readable CSV ({exc})") from None
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        raise MetadataError(f"{file}: missing columns {missing}; expected {list(_REQUIRED)} and the channels' "
                            f"FileName_/PathName_ or URL_ columns, found {list(frame.columns)}")
    cols = _channel_columns(frame, file)
    absent = [c for c in channels if c not in cols["Orig"]]
    if absent:
        raise MetadataError(f"{file}: no image columns for channels {absent}; this plate has "
                            f"{sorted(cols['Orig'])} (choose channels among them)")
    if frame.empty:
        raise MetadataError(f"{file}: no rows")
    lines = pd.RangeIndex(2, len(frame) + 2)  # the CSV's line numbers (line 1 is the header)
    out = pd.DataFrame({"source": frame.get("Metadata_Source", pd.Series(plate.source, index=frame.index)),
                        "batch": frame.get("Metadata_Batch", pd.Series(plate.batch, index=frame.index)),
                        "plate": frame["Metadata_Plate"], "load_data": file, "load_data_line": lines})
    wrong = out.index[out["plate"] != plate.plate]
    if len(wrong):
        raise MetadataError(f"{file} line {lines[wrong[0]]}: Metadata_Plate {out['plate'].iloc[wrong[0]]!r}; "
                            f"expected {plate.plate!r} (the plate folder it is in)")
    out["well"] = [_well(w, file, n) for w, n in zip(frame["Metadata_Well"], lines)]
    out["site"] = [_site(s, file, n) for s, n in zip(frame["Metadata_Site"], lines)]
    for ch in channels:
        col = cols["Orig"][ch].get("URL", cols["Orig"][ch].get("FileName"))
        out[f"path_{ch}"] = [_relative(u, prefixes, f"{file} line {n}, column {col}")
                             for u, n in zip(_urls(frame, cols["Orig"][ch]), lines)]
    if illumination:
        for ch in channels:
            if ch in cols["Illum"]:
                col = next(iter(cols["Illum"][ch].values()))
                out[f"illum_{ch}"] = [_relative(u, prefixes, f"{file} line {n}, column {col}")
                                      for u, n in zip(_urls(frame, cols["Illum"][ch]), lines)]
            else:  # load_data.csv names no illumination functions: the gallery's place for them
                out[f"illum_{ch}"] = f"{plate.illum_dir}/{plate.plate}_Illum{ch}.npy"
    dup = out.duplicated(["well", "site"], keep=False)
    if dup.any():
        first = out[dup].iloc[0]
        same = dup & (out["well"] == first["well"]) & (out["site"] == first["site"])
        raise MetadataError(f"{file}: well {first['well']} site {first['site']} appears on lines "
                            f"{out.loc[same, 'load_data_line'].tolist()}; expected one row per field")
    return out


def _well(value: str, file: str, line: int) -> str:
    m = _WELL.match(value.strip())
    if m is None or m.group(1).upper() not in ROWS_384 or not 1 <= int(m.group(2)) <= 24:
        raise MetadataError(f"{file} line {line}, column Metadata_Well: expected a 384-well address A01..P24, "
                            f"found {value!r}")
    return f"{m.group(1).upper()}{int(m.group(2)):02d}"


def _site(value: str, file: str, line: int) -> int:
    try:
        site = int(value)
    except ValueError:
        site = 0
    if site < 1:
        raise MetadataError(f"{file} line {line}, column Metadata_Site: expected a field number >= 1, "
                            f"found {value!r}")
    return site


def check_files(fs: Any, root: str, table: pd.DataFrame, columns: Iterable[str]) -> None:
    """MetadataError naming the load_data file, line and column of the first file that is not in the mirror (one
    directory listing per folder, not one request per file)."""
    listed: dict[str, set[str]] = {}
    base = root.rstrip("/")
    for col in columns:
        for rel, file, line in zip(table[col], table["load_data"], table["load_data_line"]):
            folder, name = posixpath.split(rel)
            if folder not in listed:
                try:
                    listed[folder] = {posixpath.basename(p.rstrip("/")) for p in fs.ls(f"{base}/{folder}",
                                                                                        detail=False)}
                except FileNotFoundError:
                    listed[folder] = set()
            if name not in listed[folder]:
                raise MetadataError(f"{file} line {line}, column for {col}: names {base}/{rel}, which does not "
                                    "exist; expected the mirror to hold every file its load_data names (choose "
                                    "other plates, or download the missing files)")


def site_table(parts: list[pd.DataFrame], wells: Iterable[str] | None, fields: Iterable[int] | None) -> pd.DataFrame:
    """The plates' sites, restricted to `wells` / `fields`, sorted by source, batch, plate, well, site, with the
    site-table columns every cellio layout has (id_code, dataset, experiment = the batch, cell_type)."""
    table = pd.concat(parts, ignore_index=True)
    for name, wanted, col in (("wells", wells, "well"), ("fields", fields, "site")):
        if wanted is None:
            continue
        wanted = list(wanted)
        unknown = sorted(set(wanted) - set(table[col]), key=str)
        if unknown:
            raise MetadataError(f"{name} {unknown}: not in the chosen plates' load_data (they have "
                                f"{sorted(set(table[col]), key=str)[:12]}...)")
        table = table[table[col].isin(wanted)]
    table = table.sort_values(["source", "batch", "plate", "well", "site"], kind="stable").reset_index(drop=True)
    table.insert(0, "id_code", table["plate"] + "_" + table["well"])
    table.insert(1, "dataset", "train")
    table.insert(2, "experiment", table["batch"])
    table.insert(3, "cell_type", CELL_TYPE)
    table["site"] = table["site"].astype("int64")
    table["load_data_line"] = table["load_data_line"].astype("int64")
    return table
