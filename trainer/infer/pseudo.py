"""Pseudo-labels for unlabelled wells, chosen under the plate constraint (the 1st place's progressive scheme).

Each round the current model predicts the unlabelled wells (the test set, and the held-out validation fold so its
out-of-fold accuracy measures what pseudo-labelling does to unseen experiments); per-well mean logits are
assigned per plate exactly as the submission is (`trainer.infer.assign.assign_plates`: the rotation inferred, one class
per plate); and on every plate the wells whose assigned class is most clearly ahead of the plate's other allowed
classes are kept, a growing fraction per round. Two wells of one plate never get the same class.

    labels = select_pseudo_labels(wells, sites, groups, fraction=0.4)   # id_code, sirna, margin
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from trainer.infer.aggregate import WellScores
from trainer.infer.assign import assign_plates
from trainer.infer.rotation import PlateGroupsLike, treatment_classes, well_table

__all__ = ["select_pseudo_labels", "round_fraction", "precision"]

log = logging.getLogger(__name__)


def round_fraction(k: int, first: float, step: float) -> float:
    """The share of each plate's wells pseudo-labelled in round k (0-based)."""
    return float(min(1.0, first + k * step))


def select_pseudo_labels(wells: WellScores, sites: pd.DataFrame, groups: PlateGroupsLike, *, fraction: float,
                         min_z: float = 3.0) -> pd.DataFrame:
    """id_code, sirna, margin of the kept treatment wells: per plate the top `fraction` (at least one well) by
    margin = log-probability of the assigned class minus the best other class the plate allows."""
    assigned = assign_plates(wells, sites, groups, min_z=min_z)
    label = assigned.predictions.set_index("id_code")["sirna"]
    meta = well_table(sites).loc[wells.id_codes]
    treat = treatment_classes(groups)
    keep = np.isin(wells.classes, treat)
    lp = wells.log_probs()[:, keep]
    lp = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)
    cls = wells.classes[keep]
    col = pd.Index(cls).get_indexer(label.loc[wells.id_codes].to_numpy())
    rows = np.flatnonzero((meta["well_type"] == "treatment").to_numpy() & (col >= 0))
    margin = np.full(len(wells), -np.inf)
    for r in rows:
        exp, plate = meta["experiment"].iloc[r], int(meta["plate"].iloc[r])
        allowed = groups.allowed_sirnas(plate, assigned.rotations[exp]) if exp in assigned.rotations else treat
        others = np.isin(cls, allowed) & (np.arange(len(cls)) != col[r])
        margin[r] = lp[r, col[r]] - (lp[r, others].max() if others.any() else -np.inf)
    frame = pd.DataFrame({"id_code": wells.id_codes, "sirna": label.loc[wells.id_codes].to_numpy(),
                          "margin": margin,
                          "plate": (meta["experiment"].astype(str) + "/" + meta["plate"].astype(str)).to_numpy()})
    frame = frame.iloc[rows]
    kept = [g.nlargest(max(1, int(np.ceil(fraction * len(g)))), "margin") for _, g in frame.groupby("plate")]
    out = pd.concat(kept) if kept else frame
    return out.drop(columns="plate").sort_values("id_code").reset_index(drop=True)


def precision(labels: pd.DataFrame, truth: pd.Series) -> tuple[float, int]:
    """(share of pseudo-labels equal to the truth, number of labelled wells scored)."""
    known = labels[labels["id_code"].isin(truth.index)]
    if known.empty:
        return float("nan"), 0
    hit = known["sirna"].to_numpy() == truth.loc[known["id_code"]].to_numpy()
    return float(hit.mean()), int(len(known))
