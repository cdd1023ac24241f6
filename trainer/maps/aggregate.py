"""Aggregation: well profiles -> one profile per perturbation (mean or median over its wells), and guides -> genes.

Two routes to a gene map, both used in the field:
  * over wells: every well of every guide of the gene at once (`aggregate(wells, by="gene")`), which is what
    EFAAR's RxRx3-core notebook does (it maps `treatment` `{GENE}_guide_k` to `GENE` and averages the wells);
  * over guides: first a guide map (`aggregate(wells, by="treatment")`), then `guides_to_genes(guide_map)`, which
    weighs each guide equally however many wells it has.

A perturbation seen in a single well is kept and flagged (`single_well` True, logged); rows whose key is empty are
refused (MapInputError), never dropped. Controls are left out only when named in `exclude`.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from trainer.maps.errors import MapInputError
from trainer.maps.profiles import PerturbationMap, WellProfiles

__all__ = ["METHODS", "aggregate", "guides_to_genes", "check_guide_names"]

log = logging.getLogger(__name__)

METHODS = ("mean", "median")
_GUIDE = re.compile(r"^(?P<gene>.+)_guide_(?P<k>\d+)$")  # RxRx3-core: `{GENE}_guide_{k}` (docs/dataset_formats.md)


def _reduce(x: np.ndarray, groups: np.ndarray, n_groups: int, method: str) -> np.ndarray:
    if method not in METHODS:
        raise MapInputError(f"aggregation method {method!r}; expected one of {METHODS}")
    out = np.empty((n_groups, x.shape[1]))
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(n_groups + 1))
    fn = np.mean if method == "mean" else np.median
    for g in range(n_groups):
        out[g] = fn(x[order[bounds[g]:bounds[g + 1]]], axis=0)
    return out


def _constant_columns(meta: pd.DataFrame, groups: np.ndarray, skip: Sequence[str]) -> list[str]:
    """Columns whose value is the same within every group (carried into the map as context)."""
    keep = []
    for col in meta.columns:
        if col in skip:
            continue
        per_group = pd.DataFrame({"g": groups, "v": meta[col].astype(str).to_numpy()}).groupby("g")["v"].nunique()
        if (per_group == 1).all():
            keep.append(col)
    return keep


def aggregate(wells: WellProfiles, by: str | Sequence[str], method: str = "mean",
              exclude: Sequence[str] = ()) -> PerturbationMap:
    """One row per distinct value of `by` (sorted): the mean or median of its wells' features.

    `exclude` lists key values to leave out (e.g. the negative-control label, whose mean is ~0 after a
    control-based correction). The map's metadata: the key column(s), `n_wells`, `single_well`, and every other
    column that is constant within each perturbation (e.g. `gene` in a guide map, `perturbation_type`)."""
    key = (by,) if isinstance(by, str) else tuple(by)
    wells.require(key, f"aggregate by {list(key)}")
    meta = wells.metadata
    keep = ~meta[key[0]].isin(list(exclude)).to_numpy() if exclude else np.ones(len(wells), bool)
    if not keep.any():
        raise MapInputError(f"aggregate by {list(key)}: every well is excluded ({list(exclude)})")
    if exclude:
        log.info("aggregate: %d well(s) with %s in %s left out of the map", int((~keep).sum()), list(exclude), key[0])
    sub = wells.subset(keep)
    codes, uniques = pd.MultiIndex.from_frame(sub.metadata[list(key)].astype(str)).factorize(sort=True)
    feats = _reduce(sub.features, codes, len(uniques), method)
    counts = np.bincount(codes, minlength=len(uniques))
    first = pd.Series(np.arange(len(codes))).groupby(codes).first().to_numpy()
    context = _constant_columns(sub.metadata, codes, skip=key)
    map_meta = sub.metadata.iloc[first][list(key) + context].reset_index(drop=True)
    map_meta["n_wells"] = counts
    map_meta["single_well"] = counts == 1
    singles = map_meta.loc[map_meta["single_well"], list(key)]
    if len(singles):
        log.warning("aggregate: %d perturbation(s) have a single well (kept, flagged single_well): %s",
                    len(singles), singles.astype(str).agg("|".join, axis=1).tolist()[:10])
    return PerturbationMap(feats, map_meta, key)


def check_guide_names(metadata: pd.DataFrame, gene_col: str = "gene", guide_col: str = "treatment",
                      controls: Sequence[str] = ("EMPTY_control",)) -> None:
    """Every non-control guide must be named `{gene}_guide_{k}` after its own gene (RxRx3-core's convention)."""
    for col in (gene_col, guide_col):
        if col not in metadata.columns:
            raise MapInputError(f"guide names: the metadata has no column {col!r}")
    for row, (gene, guide) in enumerate(zip(metadata[gene_col], metadata[guide_col])):
        if guide in controls:
            continue
        m = _GUIDE.match(str(guide))
        if m is None or m.group("gene") != str(gene):
            raise MapInputError(f"guide names: row {row}: {guide_col} {guide!r} is not '{gene}_guide_<k>' for "
                                f"{gene_col} {gene!r}")


def guides_to_genes(guide_map: PerturbationMap, gene_col: str = "gene", method: str = "mean") -> PerturbationMap:
    """A gene map from a guide map: the mean or median over each gene's guides (each guide weighs the same).
    Adds `n_guides`; `n_wells` is the sum over the guides; `single_well` flags a gene seen in one well."""
    meta = guide_map.metadata
    if gene_col not in meta.columns:
        raise MapInputError(f"guides_to_genes: the guide map has no {gene_col!r} column (aggregate by the guide "
                            f"column of wells whose metadata has {gene_col!r}); columns are {list(meta.columns)}")
    codes, genes = pd.factorize(meta[gene_col].astype(str), sort=True)
    feats = _reduce(guide_map.features, codes, len(genes), method)
    out = pd.DataFrame({gene_col: np.asarray(genes, dtype=object)})
    grouped = pd.Series(meta["n_wells"].to_numpy()).groupby(codes)
    out["n_guides"] = grouped.size().to_numpy()
    out["n_wells"] = grouped.sum().to_numpy()
    out["single_well"] = out["n_wells"] == 1
    context = _constant_columns(meta.drop(columns=["n_wells", "single_well"]), codes,
                                skip=(gene_col, *guide_map.key))
    first = pd.Series(np.arange(len(codes))).groupby(codes).first().to_numpy()
    for col in context:
        out[col] = meta[col].to_numpy()[first]
    return PerturbationMap(feats, out, (gene_col,))
