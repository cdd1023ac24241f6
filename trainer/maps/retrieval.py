"""Replicate and sister retrieval: mean average precision through `copairs` (the JUMP consortium's package), with
the recipes of its phenotypic-activity and phenotypic-consistency examples.

  replicate mAP  well level: each well of a perturbation (a guide) queries the other wells of that guide among
                 the negative-control wells (positives: same guide; negatives: controls, via copairs'
                 `assign_reference_index` on the control wells). A guide is "retrieved" when its mAP beats copairs'
                 null at corrected p < `threshold`.
  sister mAP     perturbation level: each guide profile queries its sister guides (same gene) among the guides of
                 every other gene (positives: same gene; negatives: a different gene).

With `same_batch` (e.g. experiment_name) the negatives must share the query's batch (copairs `neg_sameby`): a
gene's guides and a guide's wells sit in one experiment, so negatives from other experiments would let an
uncorrected batch effect pass for biology.

Null perturbations (genes with no phenotype) stay as negatives but are not queries, so the summary measures the
perturbations that can be retrieved.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from trainer.maps.errors import MapInputError, MissingDependencyError
from trainer.maps.profiles import PerturbationMap, WellProfiles

__all__ = ["NULL_SIZE", "THRESHOLD", "Retrieval", "replicate_map", "sister_map"]

log = logging.getLogger(__name__)

NULL_SIZE = 10_000   # copairs' null size per (positives, total) configuration; its examples use up to 1,000,000
THRESHOLD = 0.05     # copairs' examples: corrected p < 0.05
_REF = "Metadata_Reference_Index"


@dataclass(frozen=True)
class Retrieval:
    per_query: pd.DataFrame      # copairs mean_average_precision output: one row per perturbation
    threshold: float

    @property
    def mean_map(self) -> float:
        return float(self.per_query["mean_average_precision"].mean()) if len(self.per_query) else float("nan")

    @property
    def fraction_retrieved(self) -> float:
        return float(self.per_query["below_corrected_p"].mean()) if len(self.per_query) else float("nan")


def _copairs():
    try:
        from copairs import map as copairs_map
        from copairs.matching import assign_reference_index
    except ImportError as e:
        raise MissingDependencyError(f"retrieval mAP needs copairs ({e}); install: pip install copairs==0.5.5") from e
    return copairs_map, assign_reference_index


def _mean_ap(ap: pd.DataFrame, group: str, null_size: int, threshold: float, seed: int) -> pd.DataFrame:
    copairs_map, _ = _copairs()
    ap = ap.dropna(subset=["average_precision"])
    if ap.empty:
        raise MapInputError(f"retrieval: no query has a positive pair (every {group!r} has a single profile?)")
    return copairs_map.mean_average_precision(ap, [group], null_size=null_size, threshold=threshold, seed=seed,
                                              progress_bar=False)


def _batch_cols(meta: pd.DataFrame, same_batch: str | None, where: str) -> list[str]:
    if same_batch is None:
        return []
    if same_batch not in meta.columns:
        raise MapInputError(f"{where}: no {same_batch!r} column for same-batch negatives (in a guide map the column "
                            f"is kept only when each guide's wells share one value); use same_batch=None "
                            f"(CLI: --retrieval-batch '') to draw negatives from every batch")
    return [same_batch]


def replicate_map(wells: WellProfiles, pert_col: str = "treatment", control_col: str = "treatment",
                  control: str = "EMPTY_control", exclude: Sequence[str] = (), same_batch: str | None = None,
                  null_size: int = NULL_SIZE, threshold: float = THRESHOLD, seed: int = 0) -> Retrieval:
    """Replicate retrieval against the negative controls (copairs' phenotypic-activity recipe)."""
    copairs_map, assign_reference_index = _copairs()
    wells.require([pert_col, control_col], "replicate mAP")
    same = _batch_cols(wells.metadata, same_batch, "replicate mAP")
    meta = wells.metadata[list(dict.fromkeys([pert_col, control_col, *same]))].astype(str).reset_index(drop=True)
    is_control = (meta[control_col] == control).to_numpy()
    if not is_control.any():
        raise MapInputError(f"replicate mAP: no {control_col} == {control!r} well to retrieve against")
    treated = meta.loc[~is_control, pert_col]
    if len(treated) and not treated.duplicated().any():
        raise MapInputError(f"replicate mAP: every {pert_col} is in one well only ({len(treated)} wells); replicate "
                            "retrieval needs two or more wells of a perturbation (plates that repeat it)")
    meta = assign_reference_index(meta, pd.Index(np.nonzero(is_control)[0]), reference_col=_REF, default_value=-1)
    ap = copairs_map.average_precision(meta, wells.features, pos_sameby=[pert_col, _REF], pos_diffby=[],
                                       neg_sameby=same, neg_diffby=[pert_col, _REF], progress_bar=False)
    ap = ap[~is_control & ~ap[pert_col].isin(list(exclude)).to_numpy()]
    return Retrieval(_mean_ap(ap, pert_col, null_size, threshold, seed), threshold)


def sister_map(guide_map: PerturbationMap, group_col: str = "gene", exclude: Sequence[str] = (),
               same_batch: str | None = None, null_size: int = NULL_SIZE, threshold: float = THRESHOLD,
               seed: int = 0) -> Retrieval:
    """Sister retrieval: each guide retrieves the other guides of its gene (copairs' consistency recipe)."""
    copairs_map, _ = _copairs()
    if group_col not in guide_map.metadata.columns:
        raise MapInputError(f"sister mAP: the guide map has no {group_col!r} column")
    same = _batch_cols(guide_map.metadata, same_batch, "sister mAP")
    meta = guide_map.metadata[[group_col, *same]].astype(str).reset_index(drop=True)
    ap = copairs_map.average_precision(meta, guide_map.features, pos_sameby=[group_col], pos_diffby=[],
                                       neg_sameby=same, neg_diffby=[group_col], progress_bar=False)
    ap = ap[~ap[group_col].isin(list(exclude))]
    return Retrieval(_mean_ap(ap, group_col, null_size, threshold, seed), threshold)
