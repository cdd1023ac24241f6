"""The two tables a map is made of: per-well profiles (embeddings + the wells' metadata) and the per-perturbation map.

Both are validated on construction so that nothing downstream has to guess: features and metadata have the same
number of rows, the features are finite, and a map's perturbation keys are unique and present. Metadata follows
RxRx3-core's `metadata_rxrx3_core.csv` columns (docs/dataset_formats.md): `well_id, experiment_name, plate, address,
gene, treatment, ..., perturbation_type, cell_type`; which columns a step needs is given to that step.

    wells = WellProfiles.build(features, metadata)           # (n, F) array or DataFrame + n-row DataFrame
    wells.require(["gene", "treatment"], "aggregation")      # MapInputError naming the missing column
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from trainer.maps.errors import MapInputError

__all__ = ["WellProfiles", "PerturbationMap", "feature_names"]


def feature_names(n: int) -> list[str]:
    """The feature column names of a well-embeddings parquet (trainer/embed.py's `write_embeddings`): f0, f1, ..."""
    return [f"f{i}" for i in range(n)]


def _as_features(features: np.ndarray | pd.DataFrame, what: str) -> np.ndarray:
    if isinstance(features, pd.DataFrame):
        bad = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
        if bad:
            raise MapInputError(f"{what}: feature column(s) {bad[:5]} are not numeric")
        features = features.to_numpy()
    x = np.asarray(features)
    if x.ndim != 2:
        raise MapInputError(f"{what}: features must be 2-D (rows x features), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise MapInputError(f"{what}: features must be numeric, got dtype {x.dtype}")
    return x.astype(np.float64, copy=False)


def _check_finite(x: np.ndarray, metadata: pd.DataFrame, id_col: str | None, what: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        rows, cols = np.nonzero(bad)
        row = int(rows[0])
        name = f" ({id_col} {metadata[id_col].iloc[row]!r})" if id_col and id_col in metadata.columns else ""
        raise MapInputError(f"{what}: {int(bad.sum())} NaN/inf feature value(s) in {len(np.unique(rows))} row(s); "
                            f"first at row {row}{name}, feature f{int(cols[0])}. Drop or fix those wells before "
                            f"building a map (nothing is dropped silently)")


@dataclass(frozen=True)
class WellProfiles:
    """Per-well features (n, F) float64 and the wells' metadata (n rows, index 0..n-1)."""

    features: np.ndarray
    metadata: pd.DataFrame

    @classmethod
    def build(cls, features: np.ndarray | pd.DataFrame, metadata: pd.DataFrame,
              id_col: str | None = "well_id") -> "WellProfiles":
        """Validate and wrap: same length, finite numeric features, unique well ids (when `id_col` is present)."""
        if not isinstance(metadata, pd.DataFrame):
            raise MapInputError(f"metadata must be a pandas DataFrame, got {type(metadata).__name__}")
        x = _as_features(features, "well profiles")
        if len(x) != len(metadata):
            raise MapInputError(f"well profiles: {len(x)} embedding rows but {len(metadata)} metadata rows; "
                                f"they must describe the same wells in the same order")
        if len(x) == 0:
            raise MapInputError("well profiles: no wells")
        meta = metadata.reset_index(drop=True)
        _check_finite(x, meta, id_col, "well profiles")
        if id_col and id_col in meta.columns and meta[id_col].duplicated().any():
            dup = meta.loc[meta[id_col].duplicated(), id_col].iloc[0]
            raise MapInputError(f"well profiles: {id_col} {dup!r} appears more than once")
        return cls(x, meta)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    def require(self, columns: Sequence[str], step: str) -> None:
        """Raise naming the step if a metadata column is missing or has empty cells."""
        for col in columns:
            if col not in self.metadata.columns:
                raise MapInputError(f"{step}: the well metadata has no column {col!r}; columns are "
                                    f"{list(self.metadata.columns)}")
            empty = self.metadata[col].isna().to_numpy()
            if empty.any():
                row = int(np.nonzero(empty)[0][0])
                raise MapInputError(f"{step}: column {col!r} is empty in {int(empty.sum())} well(s), first at row "
                                    f"{row}; every well used needs a value")

    def with_features(self, features: np.ndarray) -> "WellProfiles":
        """The same wells with new features (e.g. after a correction, which may change F)."""
        return WellProfiles.build(features, self.metadata, id_col=None)

    def subset(self, mask: np.ndarray) -> "WellProfiles":
        mask = np.asarray(mask, dtype=bool)
        return WellProfiles(self.features[mask], self.metadata.loc[mask].reset_index(drop=True))


@dataclass(frozen=True)
class PerturbationMap:
    """One row per perturbation: features (p, F) and metadata holding the key columns, `n_wells`, `single_well`
    (a perturbation seen in one well: kept, flagged) and the columns constant within every perturbation."""

    features: np.ndarray
    metadata: pd.DataFrame
    key: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.features) != len(self.metadata):
            raise MapInputError(f"map: {len(self.features)} feature rows but {len(self.metadata)} metadata rows")
        missing = [k for k in self.key if k not in self.metadata.columns]
        if missing:
            raise MapInputError(f"map: key column(s) {missing} not in its metadata {list(self.metadata.columns)}")
        if self.metadata.duplicated(list(self.key)).any():
            raise MapInputError(f"map: perturbation keys {list(self.key)} are not unique")

    def __len__(self) -> int:
        return len(self.features)

    @property
    def labels(self) -> np.ndarray:
        """The perturbation labels: the key column's values (joined with '|' for a composite key)."""
        if len(self.key) == 1:
            return self.metadata[self.key[0]].astype(str).to_numpy()
        return self.metadata[list(self.key)].astype(str).agg("|".join, axis=1).to_numpy()

    def to_frame(self) -> pd.DataFrame:
        """Metadata columns then the features as f0..f{F-1} (the well-embeddings parquet's convention)."""
        feats = pd.DataFrame(self.features, columns=feature_names(self.features.shape[1]))
        return pd.concat([self.metadata.reset_index(drop=True), feats], axis=1)
