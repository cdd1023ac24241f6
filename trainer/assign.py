"""Plate assignment: the RxRx1 plate structure turned into a constraint on test predictions.

The 1108 treatment siRNAs form 4 groups; each plate holds one group, each siRNA once, and an experiment's
group->plate mapping is one of 4 cyclic rotations (`cellio.derive_plate_groups` learns groups and train rotations
from train.csv). For each test experiment we

1. score each rotation r by the mean, over its treatment wells, of the probability mass the model puts on the
   classes allowed on the well's plate under r, and keep the best (the margin to the runner-up is reported);
2. mask every class not allowed on the plate and solve, per plate, a min-cost assignment
   (`scipy.optimize.linear_sum_assignment`) on -log p of treatment wells x allowed classes. With missing wells
   the matrix is rectangular: every well gets exactly one class and every class is used at most once.

Controls keep their own label (test_controls.csv gives it, so it is `sirna` in the site table) and never take a
treatment class; treatment wells never get a control class.

    python -m trainer.assign --wells wells.npz --store test.zarr --train-store train.zarr --out assigned.csv
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from cellio.errors import ConfigError, MetadataError

from trainer.aggregate import WellScores, load_sites, load_well_scores, log_softmax

__all__ = ["PlateGroupsLike", "Assignment", "well_table", "treatment_classes", "predict_labels",
           "infer_rotations", "assign_plates", "main"]

log = logging.getLogger(__name__)

_CONTROL_TYPES = ("negative_control", "positive_control")
# Cost of giving a well an allowed class the model never scored (e.g. a class absent from a synthetic train set).
_UNSCORED_COST = 1e4


class PlateGroupsLike(Protocol):
    groups: tuple[tuple[int, ...], ...]

    def allowed_sirnas(self, plate: int, rotation: int) -> tuple[int, ...]: ...


@dataclass
class Assignment:
    """Per-well labels after plate assignment plus what was inferred on the way."""

    predictions: pd.DataFrame                      # id_code, sirna (every well: treatments and controls)
    rotations: dict[str, int] = field(default_factory=dict)        # experiment -> chosen rotation
    rotation_scores: dict[str, list[float]] = field(default_factory=dict)  # experiment -> score of r = 0..3
    margins: dict[str, float] = field(default_factory=dict)        # experiment -> best minus runner-up
    changed: int = 0                               # treatment wells whose label differs from the masked argmax
    masked: pd.DataFrame | None = None             # id_code, sirna: argmax over the plate's allowed classes only

    def summary(self, known: Mapping[str, int] | None = None) -> dict[str, Any]:
        """JSON-able summary; with `known` rotations (train experiments) it says which were inferred right."""
        out: dict[str, Any] = {
            "rotations": self.rotations, "rotation_scores": self.rotation_scores, "margins": self.margins,
            # best over runner-up, relative: the absolute margin shrinks with flat (weak or many-class) models
            "relative_margins": {e: float(m / max(sorted(self.rotation_scores[e])[-2], 1e-12))
                                 for e, m in self.margins.items()},
            "changed_wells": self.changed}
        if known:
            out["rotation_correct"] = {e: int(r) == int(known[e]) for e, r in self.rotations.items() if e in known}
        return out


def well_table(sites: pd.DataFrame) -> pd.DataFrame:
    """One row per well (id_code, sorted): experiment, plate, well_type, sirna (Int64, control labels kept)."""
    need = {"id_code", "experiment", "plate", "well_type", "sirna"}
    missing = need - set(sites.columns)
    if missing:
        raise MetadataError(f"site table lacks columns {sorted(missing)}; expected cellio's site table")
    return (sites[["id_code", "experiment", "plate", "well_type", "sirna"]]
            .drop_duplicates("id_code").sort_values("id_code").set_index("id_code"))


def treatment_classes(groups: PlateGroupsLike) -> np.ndarray:
    return np.asarray(sorted(s for g in groups.groups for s in g), dtype=np.int64)


def _treatment_log_probs(wells: WellScores, treat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-probs renormalised over the treatment classes the model scores (controls dropped)."""
    keep = np.isin(wells.classes, treat)
    if not keep.any():
        raise ConfigError(f"the model scores none of the {len(treat)} treatment classes")
    lp = wells.log_probs()[:, keep]
    return log_softmax(lp), wells.classes[keep]


def _control_labels(meta: pd.DataFrame, wells: WellScores, treat: np.ndarray) -> np.ndarray:
    """Controls keep their given label; a control without one gets its best non-treatment class."""
    labels = meta["sirna"].to_numpy(dtype="float64", na_value=np.nan)
    missing = np.isnan(labels)
    if missing.any():
        ctrl = ~np.isin(wells.classes, treat)
        if not ctrl.any():
            raise MetadataError(f"{int(missing.sum())} control wells (e.g. {meta.index[missing][0]}) have no "
                                f"label and the model has no control classes to predict them with")
        log.warning("%d control wells have no label; predicting them from the model's control classes",
                    int(missing.sum()))
        scores = wells.select(meta.index[missing]).scores[:, ctrl]
        labels[missing] = wells.classes[ctrl][np.argmax(scores, axis=1)]
    return labels.astype(np.int64)


def predict_labels(wells: WellScores, sites: pd.DataFrame, groups: PlateGroupsLike | None = None,
                   treatments: Sequence[int] | None = None) -> pd.DataFrame:
    """Argmax labels without plate constraints: treatment wells over treatment classes, controls keep theirs.

    The treatment classes come from `groups` or `treatments`, else from the treatment rows of `sites`.
    """
    treat = _resolve_treatments(groups, treatments, sites)
    meta = well_table(sites).loc[wells.id_codes]
    out = pd.Series(np.zeros(len(wells), dtype=np.int64), index=wells.id_codes)
    is_ctrl = meta["well_type"].isin(_CONTROL_TYPES).to_numpy()
    if (~is_ctrl).any():
        lp, cls = _treatment_log_probs(wells, treat)
        out[~is_ctrl] = cls[np.argmax(lp[~is_ctrl], axis=1)]
    if is_ctrl.any():
        out[is_ctrl] = _control_labels(meta[is_ctrl], wells, treat)
    return pd.DataFrame({"id_code": wells.id_codes, "sirna": out.to_numpy()})


def _resolve_treatments(groups: PlateGroupsLike | None, treatments: Sequence[int] | None,
                        sites: pd.DataFrame) -> np.ndarray:
    if groups is not None:
        return treatment_classes(groups)
    if treatments is not None:
        return np.asarray(sorted(treatments), dtype=np.int64)
    labelled = sites[(sites["well_type"] == "treatment") & sites["sirna"].notna()]
    if labelled.empty:
        raise ConfigError("cannot tell treatment classes apart: give plate groups or `treatments`")
    return np.unique(labelled["sirna"].to_numpy(dtype=np.int64))


def infer_rotations(wells: WellScores, sites: pd.DataFrame, groups: PlateGroupsLike
                    ) -> tuple[dict[str, int], dict[str, list[float]]]:
    """Best rotation per experiment: mean allowed probability mass over its treatment wells, for r = 0..3."""
    treat = treatment_classes(groups)
    meta = well_table(sites).loc[wells.id_codes]
    is_treat = ~meta["well_type"].isin(_CONTROL_TYPES).to_numpy()
    lp, cls = _treatment_log_probs(wells, treat)
    prob = np.exp(lp)
    col_of = {int(c): j for j, c in enumerate(cls)}
    rotations: dict[str, int] = {}
    scores: dict[str, list[float]] = {}
    for exp in sorted(meta["experiment"].unique()):
        rows_exp = (meta["experiment"].to_numpy() == exp) & is_treat
        if not rows_exp.any():
            continue
        per_r = []
        for r in range(4):
            mass = 0.0
            for plate in sorted(meta.loc[rows_exp, "plate"].unique()):
                rows = rows_exp & (meta["plate"].to_numpy() == plate)
                cols = [col_of[s] for s in groups.allowed_sirnas(int(plate), r) if s in col_of]
                mass += float(prob[np.ix_(rows, cols)].sum())
            per_r.append(mass / int(rows_exp.sum()))
        scores[exp] = per_r
        rotations[exp] = int(np.argmax(per_r))
    return rotations, scores


def assign_plates(wells: WellScores, sites: pd.DataFrame, groups: PlateGroupsLike, *,
                  rotations: Mapping[str, int] | None = None) -> Assignment:
    """Infer each experiment's rotation (unless given), mask impossible classes and solve per-plate assignments."""
    from scipy.optimize import linear_sum_assignment

    treat = treatment_classes(groups)
    meta = well_table(sites)
    missing = pd.Index(wells.id_codes).difference(meta.index)
    if len(missing):
        raise MetadataError(f"wells {list(missing[:5])} are not in the site table")
    meta = meta.loc[wells.id_codes]
    inferred, scores = infer_rotations(wells, sites, groups)
    chosen = {**inferred, **(dict(rotations) if rotations else {})}
    margins = {e: float(sorted(s)[-1] - sorted(s)[-2]) for e, s in scores.items()}
    for e, r in chosen.items():
        log.info("experiment %s: rotation %d (scores %s, margin %.4f)", e, r,
                 [round(x, 4) for x in scores.get(e, [])], margins.get(e, float("nan")))

    base = predict_labels(wells, sites, groups)
    labels = base["sirna"].to_numpy().copy()
    is_treat = ~meta["well_type"].isin(_CONTROL_TYPES).to_numpy()
    lp, cls = _treatment_log_probs(wells, treat)
    col_of = {int(c): j for j, c in enumerate(cls)}
    changed = 0
    exp_arr = meta["experiment"].to_numpy()
    plate_arr = meta["plate"].to_numpy()
    masked_argmax = labels.copy()
    for (exp, plate), _ in meta[is_treat].groupby(["experiment", "plate"], sort=True):
        rows = np.flatnonzero(is_treat & (exp_arr == exp) & (plate_arr == plate))
        allowed = np.asarray(groups.allowed_sirnas(int(plate), chosen[exp]), dtype=np.int64)
        cost = np.full((len(rows), len(allowed)), _UNSCORED_COST, dtype=np.float64)
        scored = np.array([a in col_of for a in allowed])
        if scored.any():
            cost[:, scored] = -lp[np.ix_(rows, [col_of[a] for a in allowed[scored]])]
        masked_argmax[rows] = allowed[np.argmin(cost, axis=1)]
        r_idx, c_idx = linear_sum_assignment(cost)
        labels[rows[r_idx]] = allowed[c_idx]
        if len(r_idx) < len(rows):
            # More wells than allowed classes (not possible on RxRx1 plates): the rest take their masked argmax.
            rest = np.setdiff1d(np.arange(len(rows)), r_idx)
            labels[rows[rest]] = allowed[np.argmin(cost[rest], axis=1)]
            log.warning("%s plate %s: %d wells but only %d allowed classes", exp, plate, len(rows), len(allowed))
        changed += int((labels[rows] != masked_argmax[rows]).sum())
    preds = pd.DataFrame({"id_code": wells.id_codes, "sirna": labels.astype(np.int64)})
    masked = pd.DataFrame({"id_code": wells.id_codes, "sirna": masked_argmax.astype(np.int64)})
    return Assignment(preds, {e: int(r) for e, r in chosen.items()}, scores, margins, changed, masked)


def main(argv: Sequence[str] | None = None) -> int:
    import cellio

    p = argparse.ArgumentParser(prog="python -m trainer.assign", description=__doc__.split("\n")[0])
    p.add_argument("--wells", required=True, help="per-well scores .npz from trainer.aggregate")
    p.add_argument("--store", help="store of the predicted wells (site table)")
    p.add_argument("--data", help="or the raw data set directory (its site table has train and test)")
    p.add_argument("--train-store", help="store whose train rows give the plate groups (default: --store/--data)")
    p.add_argument("--out", required=True, help="output CSV id_code,sirna")
    p.add_argument("--summary", help="optional JSON with rotations and margins")
    args = p.parse_args(argv)
    sites = load_sites(args.store, args.data)
    train_sites = load_sites(args.train_store) if args.train_store else sites
    groups = cellio.derive_plate_groups(train_sites[train_sites["dataset"] == "train"])
    result = assign_plates(load_well_scores(args.wells), sites, groups)
    result.predictions.to_csv(args.out, index=False)
    if args.summary:
        with open(args.summary, "w", encoding="utf-8") as fh:
            json.dump(result.summary(), fh, indent=2)
    print(f"{len(result.predictions)} wells -> {args.out}; rotations {result.rotations}; "
          f"{result.changed} treatment wells changed by the assignment")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
