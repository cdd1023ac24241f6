"""Plate assignment: the RxRx1 plate structure turned into a constraint on test predictions.

The 1108 treatment siRNAs form 4 groups; each plate holds one group, each siRNA once, and an experiment's
group->plate mapping is one of 4 cyclic rotations (`cellio.derive_plate_groups` learns groups and train rotations
from train.csv). For each test experiment we

1. score each rotation r by the mean probability mass the treatment wells put on the classes their plate allows
   under r, and keep the best (`rotation_evidence`). The scores are compared with those of random groupings of
   the same classes: an experiment whose best rotation stands less than `min_z` null standard
   deviations above the null (or not clear of the runner-up) takes a clearer fallback (an ensemble member's own rotation) or, without one,
   no plate mask (only "each class once per plate"): a wrong rotation masks out every true class and would zero
   the experiment;
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
from trainer.calibrate import sinkhorn

__all__ = ["PlateGroupsLike", "Assignment", "RotationEvidence", "well_table", "treatment_classes", "predict_labels",
           "rotation_evidence", "infer_rotations", "choose_rotations", "assign_plates", "main"]

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
    evidence: dict[str, "RotationEvidence"] = field(default_factory=dict)  # experiment -> rotation evidence
    fallbacks: dict[str, str] = field(default_factory=dict)  # experiment -> why it did not use its own rotation

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
            "fallbacks": dict(self.fallbacks)}
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


@dataclass(frozen=True)
class RotationEvidence:
    """What one experiment's wells say about its rotation r = 0..3.

    `mass[r]`: the mean probability mass its treatment wells put on the classes their plate allows under r
    (0.25 each for a model that knows nothing). `null_mean` / `null_std`: the same statistic for random groupings
    of the same classes into groups of the same sizes - what a rotation scores when it is unrelated to the truth,
    WITH this model's noise (a likelihood posterior over the 4 rotations would take that noise for evidence).
    `z`: each rotation in null standard deviations above the null mean; `separation`: best minus runner-up.
    A rotation is trusted when its z reaches ~3 (a rotation unrelated to the truth does that ~0.5% of the time)
    and it stands clear of the runner-up."""

    mass: tuple[float, ...]
    null_mean: float
    null_std: float

    @property
    def rotation(self) -> int:
        return int(np.argmax(self.mass))

    @property
    def z(self) -> tuple[float, ...]:
        return tuple((m - self.null_mean) / self.null_std if self.null_std > 0 else 0.0 for m in self.mass)

    @property
    def separation(self) -> float:
        z = sorted(self.z)
        return float(z[-1] - z[-2])

    def trusted(self, min_z: float, min_gap: float = 1.0) -> bool:
        return max(self.z) >= min_z and self.separation >= min_gap


def rotation_evidence(wells: WellScores, sites: pd.DataFrame, groups: PlateGroupsLike, *,
                      null_draws: int = 64, seed: int = 0) -> dict[str, RotationEvidence]:
    """RotationEvidence of every experiment with treatment wells among `wells` (null: `null_draws` random
    groupings, seeded, the same for every experiment)."""
    treat = treatment_classes(groups)
    meta = well_table(sites).loc[wells.id_codes]
    is_treat = ~meta["well_type"].isin(_CONTROL_TYPES).to_numpy()
    lp, cls = _treatment_log_probs(wells, treat)
    prob = np.exp(lp)
    col_of = {int(c): j for j, c in enumerate(cls)}
    # column -> its real group, and `null_draws` random relabellings with the same group sizes
    real = np.full(len(cls), -1)
    for g, members in enumerate(groups.groups):
        real[[col_of[s] for s in members if s in col_of]] = g
    rng = np.random.default_rng([seed, 0x5107])
    scored = np.flatnonzero(real >= 0)
    fake = np.stack([real] * null_draws)
    for k in range(null_draws):
        fake[k, scored] = real[scored][rng.permutation(len(scored))]
    exp_arr, plate_arr = meta["experiment"].to_numpy(), meta["plate"].to_numpy()
    out: dict[str, RotationEvidence] = {}
    for exp in sorted(meta["experiment"].unique()):
        rows = np.flatnonzero((exp_arr == exp) & is_treat)
        if not len(rows):
            continue
        # per well and labelling: mass on each group (wells x labellings x 4)
        onehot = np.stack([real, *fake])[:, :, None] == np.arange(4)[None, None, :]
        group_mass = np.einsum("wc,lcg->wlg", prob[rows], onehot.astype(np.float64))
        wanted = (plate_arr[rows][:, None] - 1 + np.arange(4)[None, :]) % 4  # well x rotation -> its group
        per_rot = np.take_along_axis(group_mass, np.broadcast_to(wanted[:, None, :], group_mass.shape),
                                     axis=2).mean(axis=0)  # labellings x rotations
        null = per_rot[1:].ravel()
        out[exp] = RotationEvidence(tuple(float(v) for v in per_rot[0]), float(null.mean()), float(null.std()))
    return out


def infer_rotations(wells: WellScores, sites: pd.DataFrame, groups: PlateGroupsLike
                    ) -> tuple[dict[str, int], dict[str, list[float]]]:
    """Best rotation per experiment, and each rotation's mean allowed probability mass."""
    ev = rotation_evidence(wells, sites, groups)
    return {e: v.rotation for e, v in ev.items()}, {e: list(v.mass) for e, v in ev.items()}


def choose_rotations(evidence: Mapping[str, RotationEvidence], *, min_z: float,
                     fallbacks: Sequence[Mapping[str, RotationEvidence]] = ()) -> tuple[dict[str, int], dict[str, str]]:
    """(experiment -> rotation to use, experiment -> why a fallback was taken). An experiment whose best rotation
    is not trusted (`RotationEvidence.trusted(min_z)`) takes the strongest trusted fallback (e.g. one ensemble
    member's own evidence); with none it gets no rotation at all (no plate mask: a wrong rotation would mask out
    every true class and zero the experiment)."""
    chosen: dict[str, int] = {}
    why: dict[str, str] = {}
    for exp, ev in evidence.items():
        if ev.trusted(min_z):
            chosen[exp] = ev.rotation
            continue
        alts = [f[exp] for f in fallbacks if exp in f and f[exp].trusted(min_z)]
        alt = max(alts, key=lambda e: max(e.z), default=None)
        if alt is not None:
            chosen[exp] = alt.rotation
            why[exp] = (f"ambiguous rotation (z {max(ev.z):.2f}, gap {ev.separation:.2f}; needs z >= {min_z}); "
                        f"used a member model's rotation {alt.rotation} (z {max(alt.z):.2f})")
        else:
            why[exp] = (f"ambiguous rotation (z {max(ev.z):.2f}, gap {ev.separation:.2f}; needs z >= {min_z}, "
                        f"no trusted fallback): no plate mask, each treatment class at most once per plate")
    return chosen, why


def assign_plates(wells: WellScores, sites: pd.DataFrame, groups: PlateGroupsLike, *,
                  rotations: Mapping[str, int] | None = None, min_z: float = 3.0,
                  fallbacks: Sequence[Mapping[str, RotationEvidence]] = (), balance: str = "none") -> Assignment:
    """Infer each experiment's rotation (unless given), mask impossible classes and solve per-plate assignments.
    Experiments whose rotation stays ambiguous (`choose_rotations`) get no mask: their plates are assigned over
    every treatment class (each still at most once per plate). `balance="sinkhorn"` first balances each plate's
    wells x allowed classes block (trainer.calibrate.sinkhorn: every class the same share of the plate), which
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
    chosen, why = choose_rotations(evidence, min_z=min_z, fallbacks=fallbacks)
    for e, r in (rotations or {}).items():
        chosen[e] = int(r)
        why.pop(e, None)
    for e, ev in evidence.items():
        log.info("experiment %s: rotation %s (mass %s, z %s)%s", e, chosen.get(e),
                 [round(x, 4) for x in ev.mass], [round(x, 2) for x in ev.z],
                 f"; {why[e]}" if e in why else "")

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
