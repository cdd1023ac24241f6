"""How site-table columns are stored: a logical dtype per column ("Int64", "bool", "int64", "float64", "str") and its
encoding (strings as zero-padded UTF-8 bytes, uint8 (N, L), readable by every Zarr v3 client; nullable Int64 with
-1 for missing)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["column_kind", "encode_column", "decode_column", "encode_strings", "decode_strings"]


def column_kind(s: pd.Series) -> str:
    """The logical dtype a site-table column is stored as: "Int64", "bool", "int64", "float64" or "str"."""
    if isinstance(s.dtype, pd.Int64Dtype):
        return "Int64"
    if pd.api.types.is_bool_dtype(s):
        return "bool"
    if pd.api.types.is_integer_dtype(s):
        return "int64"
    if pd.api.types.is_float_dtype(s):
        return "float64"
    return "str"


def encode_strings(values: Any) -> np.ndarray:
    """str values -> uint8 (N, L): UTF-8 bytes zero-padded to the longest value (L >= 1)."""
    enc = [str(v).encode("utf-8") for v in values]
    width = max((len(b) for b in enc), default=0) or 1
    return np.frombuffer(np.array(enc, dtype=f"S{width}").tobytes(), dtype=np.uint8).reshape(len(enc), width)


def decode_strings(raw: np.ndarray) -> np.ndarray:
    """uint8 (N, L) zero-padded UTF-8 -> object array of str."""
    n, width = raw.shape
    if width == 0:
        return np.array([""] * n, dtype=object)
    as_bytes = np.ascontiguousarray(raw).view(f"S{width}").ravel()
    return np.array([b.decode("utf-8") for b in as_bytes], dtype=object)


def encode_column(s: pd.Series, kind: str) -> np.ndarray:
    """A site-table column as stored: strings as `encode_strings`, nullable Int64 with -1 for missing."""
    if kind == "Int64":
        return s.fillna(-1).astype(np.int64).to_numpy()
    if kind == "str":
        return encode_strings(s)
    return s.to_numpy().astype(kind)


def decode_column(raw: np.ndarray, kind: str) -> Any:
    """The inverse of `encode_column`: a column ready for a DataFrame."""
    if kind == "str":
        return decode_strings(raw)
    if kind == "Int64":
        col = pd.array(np.where(raw < 0, 0, raw), dtype="Int64")
        col[raw < 0] = pd.NA
        return col
    if kind == "bool":
        return raw.astype(bool)
    return raw.astype(kind)
