"""Plate assignment: the RxRx1 plate structure turned into a constraint on test predictions.

The 1108 treatment siRNAs form 4 groups; each plate holds one group, each siRNA once, and an experiment's
group->plate mapping is one of 4 cyclic rotations (`cellio.derive_plate_groups` learns groups and train rotations
from train.csv). For each test experiment we

1. take its rotation as decided by trainer.infer.rotation (several sources that must agree; the chain passes them as
   `rotations`) or, without one, from these scores' own evidence when it is trusted (`rotation_evidence` against
   random groupings, `min_z`). An experiment without a rotation gets no plate mask, only "each class once per
   plate": a wrong rotation masks out every true class and zeroes the experiment;
2. mask every class not allowed on the plate and solve, per plate, a min-cost assignment
   (`scipy.optimize.linear_sum_assignment`) on -log p of treatment wells x allowed classes. With missing wells
   the matrix is rectangular: every well gets exactly one class and every class is used at most once.

Controls keep their own label (test_controls.csv gives it, so it is `sirna` in the site table) and never take a
treatment class; treatment wells never get a control class.

    python -m trainer.infer.assign --wells wells.npz --store test.zarr --train-store train.zarr --out assigned.csv
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cellio.errors import ConfigError, MetadataError

from trainer.infer.aggregate import WellScores, load_sites, load_well_scores
from trainer.infer.calibrate import sinkhorn
from trainer.infer.rotation import (CONTROL_TYPES, PlateGroupsLike, RotationEvidence, RotationSource, decide_rotations,
                              rotation_evidence, treatment_classes, treatment_log_probs, well_table)
from trainer.training.layout import require_plate_constraint

__all__ = ["Assignment", "predict_labels", "infer_rotations", "assign_plates", "main"]

log = logging.getLogger(__name__)
# Cost of giving a well an allowed class the model never scored (e.g. a class absent from a synthetic train set).
_UNSCORED_COST = 1e4


@dataclass
class Assignment:
    """Per-well labels after plate assignment plus what was inferred on the way."""

    predictions: pd.DataFrame                      # id_code, sirna (every well: treatments and controls)
    rotations: dict[str, int] = field(default_factory=dict)        # experiment -> chosen rotation
    rotation_scores: dict[str, list[float]] = field(default_factory=dict)  # experiment -> score of r = 0..3
    margins: dict[str, float] = field(default_factory=dict)        # experiment -> best minus runner-up
    changed: int = 0                               # treatment wells whose label differs from the masked argmax
    masked: pd.DataFrame | None = None             # id_code, sirna: argmax over the plate's allowed classes only
    evidence: dict[str, RotationEvidence] = field(default_factory=dict)  # experiment -> these scores' evidence
    unmasked: dict[str, str] = field(default_factory=dict)  # experiment -> why it has no rotation (no plate mask)

    def summary(self, known: Mapping[str, int] | None = None) -> dict[str, Any]:
        """JSON-able summary; with `known` rotations (train experiments) it says which were inferred right."""
        out: dict[str, Any] = {
            "rotations": self.rotations, "rotation_scores": self.rotation_scores, "margins": self.margins,
            # best over runner-up, relative: the absolute margin shrinks with flat (weak or many-class) models
            "relative_margins": {e: float(m / max(sorted(self.rotation_scores[e])[-2], 1e-12))
                                 for e, m in self.margins.items()},
            "changed_wells": self.changed,
            "rotation_z": {e: list(v.z) for e, v in self.evidence.items()},
            "rotation_separation": {e: v.separation for e, v in self.evidence.items()},
            "unmasked": dict(self.unmasked)}
        if known:
            out["rotation_correct"] = {e: int(r) == int(known[e]) for e, r in self.rotations.items() if e in known}
        return out


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
    is_ctrl = meta["well_type"].isin(CONTROL_TYPES).to_numpy()
    if (~is_ctrl).any():
        lp, cls = treatment_log_probs(wells, treat)
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
    """Best rotation per experiment, and each rotation's mean allowed probability mass."""
    ev = rotation_evidence(wells, sites, groups)
    return {e: v.rotation for e, v in ev.items()}, {e: list(v.mass) for e, v in ev.items()}


def assign_plates(wells: WellScores, sites: pd.DataFrame, groups: PlateGroupsLike, *,
                  rotations: Mapping[str, int | None] | None = None, min_z: float = 3.0,
                  balance: str = "none") -> Assignment:
    """Mask impossible classes and solve per-plate assignments.

    `rotations`: experiment -> the rotation to mask its plates with (trainer.infer.rotation.decide_rotations decides
    them from several sources); an experiment absent from it, or mapped to None, gets no mask: its plates are
    assigned over every treatment class (each still at most once per plate). Without `rotations` these scores'
    own evidence decides (masked where trusted at `min_z`). `balance="sinkhorn"` first balances each plate's
    wells x allowed classes block (trainer.infer.calibrate.sinkhorn: every class the same share of the plate), which
    changes the masked argmax and, where a plate has fewer wells than classes, the assignment."""

    from scipy.optimize import linear_sum_assignment

    if balance not in ("none", "sinkhorn"):
        raise ConfigError(f"assign_plates: balance must be 'none' or 'sinkhorn', found {balance!r}")
    treat = treatment_classes(groups)
    meta = well_table(sites)
    missing = pd.Index(wells.id_codes).difference(meta.index)
    if len(missing):
        raise MetadataError(f"wells {list(missing[:5])} are not in the site table")
    meta = meta.loc[wells.id_codes]
    evidence = rotation_evidence(wells, sites, groups)
    if rotations is None:
        decisions = decide_rotations([RotationSource("these scores", evidence, votes=True)], min_z=min_z)
        chosen = {e: int(d.rotation) for e, d in decisions.items() if d.rotation is not None}
        why = {e: d.why for e, d in decisions.items() if d.rotation is None}
    else:
        chosen = {e: int(r) for e, r in rotations.items() if r is not None}
        why = {e: "no rotation decided: no plate mask, each treatment class at most once per plate"
               for e in evidence if e not in chosen}
    for e, ev in evidence.items():
        log.info("experiment %s: rotation %s (mass %s, z %s)%s", e, chosen.get(e),
                 [round(x, 4) for x in ev.mass], [round(x, 2) for x in ev.z],
                 f"; {why[e]}" if e in why else "")

    base = predict_labels(wells, sites, groups)
    labels = base["sirna"].to_numpy().copy()
    is_treat = ~meta["well_type"].isin(CONTROL_TYPES).to_numpy()
    lp, cls = treatment_log_probs(wells, treat)
    col_of = {int(c): j for j, c in enumerate(cls)}
    changed = 0
    exp_arr = meta["experiment"].to_numpy()
    plate_arr = meta["plate"].to_numpy()
    masked_argmax = labels.copy()
    for (exp, plate), _ in meta[is_treat].groupby(["experiment", "plate"], sort=True):
        rows = np.flatnonzero(is_treat & (exp_arr == exp) & (plate_arr == plate))
        # without a rotation every treatment class is allowed, still each at most once per plate
        allowed = (np.asarray(groups.allowed_sirnas(int(plate), chosen[exp]), dtype=np.int64) if exp in chosen
                   else treat)
        cost = np.full((len(rows), len(allowed)), _UNSCORED_COST, dtype=np.float64)
        scored = np.array([a in col_of for a in allowed])
        if scored.any():
            block = lp[np.ix_(rows, [col_of[a] for a in allowed[scored]])]
            cost[:, scored] = -(sinkhorn(block) if balance == "sinkhorn" else block)
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
    return Assignment(preds, {e: int(r) for e, r in chosen.items()},
                      {e: list(ev.mass) for e, ev in evidence.items()},
                      {e: float(sorted(ev.mass)[-1] - sorted(ev.mass)[-2]) for e, ev in evidence.items()},
                      changed, masked, evidence, why)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.infer.assign", description=__doc__.split("\n\n")[0])
    p.add_argument("--wells", required=True, help="per-well scores .npz from trainer.infer.aggregate")
    p.add_argument("--store", help="store of the predicted wells (site table)")
    p.add_argument("--data", help="or the raw data set directory (its site table has train and test)")
    p.add_argument("--train-store", help="store whose train rows give the plate groups (default: --store/--data)")
    p.add_argument("--out", required=True, help="output CSV id_code,sirna")
    p.add_argument("--summary", help="optional JSON with rotations and margins")
    args = p.parse_args(argv)
    sites = load_sites(args.store, args.data)
    train_sites = load_sites(args.train_store) if args.train_store else sites
    groups = require_plate_constraint(train_sites, "python -m trainer.infer.assign")
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
