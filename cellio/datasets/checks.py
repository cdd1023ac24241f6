"""Validation helpers the data set readers share: CSVs read as text (types are checked here, with row numbers),
header checks, and `Problems`, which collects every bad row of a file so one MetadataError lists them all (the
first few and the total) instead of stopping at the first."""
from __future__ import annotations

import os
from typing import IO, Iterable

import numpy as np
import pandas as pd

from ..errors import MetadataError

__all__ = ["MAX_REPORTED_PROBLEMS", "Problems", "read_text_csv", "check_columns", "int_column", "float_column",
           "csv_header"]

MAX_REPORTED_PROBLEMS = 20


class Problems:
    """Collects validation problems of one data set (`what`, e.g. "RxRx2 metadata"); `raise_if_any` reports the
    first `limit` and the total."""

    def __init__(self, what: str, limit: int = MAX_REPORTED_PROBLEMS) -> None:
        self.what = what
        self.limit = limit
        self.items: list[str] = []
        self.count = 0

    def add(self, msg: str) -> None:
        self.count += 1
        if len(self.items) < self.limit:
            self.items.append(msg)

    def add_rows(self, file: str, rows: Iterable[int] | np.ndarray, column: str, values: Iterable[object],
                 expected: str | Iterable[str]) -> None:
        """One problem per offending row; `rows` are 0-based positions among the file's data rows; `expected` is
        one text for all rows or one per row."""
        rows = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows)
        values = np.asarray(list(values), dtype=object)
        per_row = None if isinstance(expected, str) else np.asarray(list(expected), dtype=object)
        room = max(self.limit - len(self.items), 0)
        for i, (r, v) in enumerate(zip(rows[:room], values[:room])):
            exp = expected if per_row is None else per_row[i]
            self.items.append(f"{file} row {int(r) + 1} (line {int(r) + 2}), column '{column}': found {v!r}, "
                              f"expected {exp}")
        self.count += len(rows)

    def raise_if_any(self, where: str) -> None:
        if not self.count:
            return
        more = f"\n  ... and {self.count - len(self.items)} more" if self.count > len(self.items) else ""
        raise MetadataError(f"{self.count} problem(s) in the {self.what} under {where}:\n  "
                            + "\n  ".join(self.items) + more)


def read_text_csv(source: str | IO[bytes], label: str) -> pd.DataFrame:
    """Every column as text, empty cells as "" (types are validated by the caller, with row numbers)."""
    try:
        return pd.read_csv(source, dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        raise MetadataError(f"{label}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise MetadataError(f"{label}: not a readable CSV ({exc})") from None


def check_columns(df: pd.DataFrame, label: str, required: Iterable[str]) -> None:
    """MetadataError naming the missing or duplicated columns (extra columns are allowed: later uploads add some)."""
    required = list(required)
    cols = list(df.columns)
    missing = [c for c in required if c not in cols]
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if missing or dup:
        parts = ([f"missing column(s) {missing}"] if missing else []) + ([f"duplicated column(s) {dup}"] if dup else [])
        raise MetadataError(f"{label} (header, line 1): {'; '.join(parts)}; expected at least the columns "
                            f"{required}, found {cols}")


def int_column(df: pd.DataFrame, col: str, label: str, problems: Problems, lo: int, hi: int) -> pd.Series:
    """A text column as integers in lo..hi; bad rows are reported and become <NA>."""
    text = df[col].str.strip()
    ok = text.str.fullmatch(r"[+-]?\d+(\.0*)?")
    num = pd.to_numeric(text.where(ok), errors="coerce")
    bad = ~ok | (num < lo) | (num > hi)
    problems.add_rows(label, np.flatnonzero(bad.to_numpy()), col, df[col][bad], f"an integer in {lo}..{hi}")
    return num.where(~bad).astype("Int64")


def float_column(df: pd.DataFrame, col: str, label: str, problems: Problems, *, required: pd.Series) -> pd.Series:
    """A text column as float64: a positive number where `required` (a boolean mask), empty or a positive number
    elsewhere (empty -> NaN)."""
    text = df[col].str.strip()
    num = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = (text != "") & (num.isna() | ~(num > 0))
    bad |= required & (text == "")
    problems.add_rows(label, np.flatnonzero(bad.to_numpy()), col, df[col][bad], "a positive number")
    return num.astype(np.float64)


def csv_header(path: str | os.PathLike[str]) -> list[str]:
    """The column names on the first line of a local CSV ([] when it cannot be read): cheap, for `is_raw_dir`."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            line = f.readline()
    except OSError:
        return []
    return [c.strip().strip('"') for c in line.rstrip("\r\n").split(",")]
