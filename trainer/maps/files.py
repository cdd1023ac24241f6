"""Reading well embeddings and writing maps.

Input: a parquet with one row per well, metadata columns plus feature columns `f0..f{F-1}` (what
trainer/embed.py's `write_embeddings` writes; another prefix, e.g. OpenPhenom's `feature_`, with `prefix`),
optionally joined on `well_id` with a separate metadata table (RxRx3-core's metadata_rxrx3_core.csv).
Output: a map as parquet (metadata columns then f0..) and, with the optional `anndata` package, as `.h5ad`
(X = features, obs = metadata).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.maps.errors import MapInputError, MissingDependencyError
from trainer.maps.profiles import PerturbationMap, WellProfiles, feature_names

__all__ = ["read_well_embeddings", "write_well_embeddings", "write_map", "read_map"]

log = logging.getLogger(__name__)


def _split(frame: pd.DataFrame, prefix: str, where: str) -> tuple[np.ndarray, pd.DataFrame]:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    numbered = {int(m.group(1)): c for c in frame.columns if (m := pattern.match(str(c)))}
    if not numbered:
        raise MapInputError(f"{where}: no feature columns named {prefix}0, {prefix}1, ...; columns are "
                            f"{list(frame.columns)[:12]}")
    expected = list(range(max(numbered) + 1))
    if sorted(numbered) != expected:
        missing = sorted(set(expected) - set(numbered))[:5]
        raise MapInputError(f"{where}: feature columns {prefix}0..{prefix}{max(numbered)} expected, "
                            f"{[f'{prefix}{i}' for i in missing]} missing")
    columns = [numbered[i] for i in expected]
    return frame[columns].to_numpy(dtype=np.float64), frame.drop(columns=columns)


def read_well_embeddings(path: str | Path, metadata: str | Path | pd.DataFrame | None = None,
                         prefix: str = "f", id_col: str = "well_id",
                         embeddings_id_col: str | None = None) -> WellProfiles:
    """Well profiles from an embeddings parquet (+ a metadata table joined on `id_col` when given: every embedded
    well must have metadata; metadata rows without an embedding are only counted). The embeddings' ids are in
    `embeddings_id_col` (default `id_col`; cellio's OUT/embeddings.parquet: `id_code`); an embeddings column the
    table also has is the table's."""
    path = Path(path)
    if not path.is_file():
        raise MapInputError(f"embeddings: no file {path}")
    frame = pd.read_parquet(path)
    x, meta = _split(frame, prefix, str(path))
    if metadata is not None:
        table = metadata if isinstance(metadata, pd.DataFrame) else pd.read_csv(metadata)
        where = "metadata table" if isinstance(metadata, pd.DataFrame) else str(metadata)
        own_id = embeddings_id_col or id_col
        for name, t, col in ((str(path), meta, own_id), (where, table, id_col)):
            if col not in t.columns:
                raise MapInputError(f"{name}: no {col!r} column to join embeddings and metadata on")
        if table[id_col].duplicated().any():
            raise MapInputError(f"{where}: {id_col} {table.loc[table[id_col].duplicated(), id_col].iloc[0]!r} "
                                f"appears more than once")
        pos = pd.Index(table[id_col]).get_indexer(meta[own_id])
        if (pos < 0).any():
            missing = meta.loc[pos < 0, own_id].tolist()
            raise MapInputError(f"{where}: {len(missing)} embedded well(s) have no metadata (no {id_col} equal to "
                                f"the embeddings' {own_id}), e.g. {missing[:5]}")
        extra = [c for c in meta.columns if c != own_id and c not in table.columns]
        meta = pd.concat([table.iloc[pos].reset_index(drop=True), meta[extra].reset_index(drop=True)], axis=1)
        log.info("embeddings: %d wells joined with %s (%d metadata rows have no embedding)", len(meta), where,
                 len(table) - len(meta))
    return WellProfiles.build(x, meta, id_col=id_col)


def write_well_embeddings(wells: WellProfiles, path: str | Path) -> Path:
    """Well profiles as the embeddings parquet `read_well_embeddings` reads (metadata columns, then f0..)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    feats = pd.DataFrame(wells.features, columns=feature_names(wells.n_features))
    pd.concat([wells.metadata, feats], axis=1).to_parquet(path, index=False)
    return path


def write_map(pmap: PerturbationMap, path: str | Path, h5ad: bool = False) -> list[Path]:
    """`path` (.parquet) and, with `h5ad`, the same map beside it as .h5ad (needs `anndata`)."""
    path = Path(path)
    if path.suffix != ".parquet":
        raise MapInputError(f"map output {path}: expected a .parquet path")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pmap.to_frame()
    frame.attrs = {}
    frame.to_parquet(path, index=False)
    written = [path]
    if h5ad:
        try:
            import anndata
        except ImportError as e:
            raise MissingDependencyError(f"--h5ad needs anndata ({e}); install: pip install anndata==0.12.6") from e
        obs = pmap.metadata.reset_index(drop=True).copy()
        # anndata writes text as Python-object strings (not pandas' Arrow-backed string arrays); mixed columns
        # (e.g. numbers and NaN in SMILES) become text
        obs.index = pd.Index([str(v) for v in pmap.labels], dtype=object, name="perturbation")
        for col in obs.columns:
            if not (pd.api.types.is_numeric_dtype(obs[col]) or pd.api.types.is_bool_dtype(obs[col])):
                obs[col] = pd.Series([str(v) for v in obs[col]], dtype=object, index=obs.index)
        adata = anndata.AnnData(X=pmap.features.astype(np.float32), obs=obs,
                                var=pd.DataFrame(index=pd.Index(feature_names(pmap.features.shape[1]), dtype=object)))
        adata.uns["key"] = list(pmap.key)
        h5 = path.with_suffix(".h5ad")
        # anndata would turn repeated strings into categoricals whose categories are pandas' Arrow strings, which
        # it cannot write (pandas 3): keep them as plain text
        adata.write_h5ad(h5, convert_strings_to_categoricals=False)
        written.append(h5)
    return written


def read_map(path: str | Path, key: tuple[str, ...]) -> PerturbationMap:
    """A map parquet written by `write_map`, with its key column(s)."""
    x, meta = _split(pd.read_parquet(path), "f", str(path))
    return PerturbationMap(x, meta.reset_index(drop=True), tuple(key))
