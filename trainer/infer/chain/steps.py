"""One split's inference chain, step by step (no files): single view -> TTA (mean logits / mean probs / geometric
mean / vote) -> LightGBM stacker -> embedding centroids -> model ensemble -> + plate mask and plate assignment,
with per-well labels for every step so the report can put them side by side.

    res = inference_steps(models, sites, groups=groups, calibration=cal, extra=[centroids])
    res.labels["ensemble + plate assignment"]          # id_code, sirna of every well

`models[0]` is the primary model (the single-model steps use it); the ensemble averages the mean logits of every
model, aligned by sirna. Every step's labels come from `trainer.infer.assign.predict_labels` (treatment wells over
treatment classes only, controls keep their given labels) or from plate assignment. A new step is one more entry
in `inference_steps` and STEP_ORDER (its place when steps tie, trainer/infer/chain/select.py).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ContextManager

import numpy as np
import pandas as pd

from cellio.errors import ConfigError

from trainer.infer.aggregate import (WellScores, ensemble, geometric_mean, majority_vote, mean_logits, mean_probs,
                                     single_view)
from trainer.infer.assign import Assignment, assign_plates, predict_labels
from trainer.infer.calibrate import fit_temperature, nll, temper
from trainer.infer.risk import ASSIGN, MASK, UNROTATED
from trainer.infer.rotation import (PlateGroupsLike, RotationDecision, RotationSource, SourceRecord, centred_scores,
                                    decide_rotations, rotation_evidence)
from trainer.infer.stacker import build_features

__all__ = ["Meter", "no_meter", "PLATE_BASES", "STEP_ORDER", "StepResults", "Calibration", "fit_calibration",
           "members_of", "rotation_sources", "inference_steps"]

log = logging.getLogger(__name__)

# A meter times named steps of the chain: any callable name -> context manager (the rehearsal's StepMeter,
# trainer/job/meter.py); `no_meter`, the default, does nothing.
Meter = Callable[[str], ContextManager[Any]]


def no_meter(name: str) -> ContextManager[Any]:
    """The default meter: measures nothing."""
    return contextlib.nullcontext()


# The bases of the plate steps and the plain (argmax) step of each.
PLATE_BASES = {"TTA mean": "TTA mean logits", "embedding centroids": "embedding centroids", "ensemble": "ensemble"}
# Names used in reports, in the order of the chain. A tie in rank_steps goes to the later step: the steps that
# need no rotation come last, so a tie between a rotation's best case and the safe step goes to the safe step.
STEP_ORDER = ("single view", "TTA mean logits", "TTA mean probs", "TTA geometric mean", "TTA majority vote",
              "stacker", "embedding centroids", "ensemble",
              *(base + step for base in PLATE_BASES for step in (MASK, ASSIGN)),
              *(base + UNROTATED for base in PLATE_BASES))


@dataclass
class StepResults:
    labels: dict[str, pd.DataFrame] = field(default_factory=dict)   # step -> id_code, sirna (every well)
    scores: dict[str, WellScores] = field(default_factory=dict)     # step -> well scores (not for assignment)
    assignments: dict[str, Assignment] = field(default_factory=dict)
    bases: dict[str, tuple[WellScores, str]] = field(default_factory=dict)  # plate-step base -> scores, plain step
    sources: list[RotationSource] = field(default_factory=list)     # the rotation evidence of each source
    rotations: dict[str, RotationDecision] = field(default_factory=dict)  # experiment -> the rotation used

    @property
    def final(self) -> str:
        """The last step computed."""
        return list(self.labels)[-1]


@dataclass(frozen=True)
class Calibration:
    """What the chain learns from out-of-fold wells and applies to test: one softmax temperature per model (on
    its TTA mean logits) and the ensemble weights (greedy selection on the out-of-fold accuracy)."""

    temperatures: tuple[float, ...]
    weights: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"temperatures": list(self.temperatures), "weights": list(self.weights)}


def fit_calibration(members: Sequence[WellScores], sites: pd.DataFrame, truth: pd.Series, *,
                    weights: Sequence[float] | None = None, max_rounds: int = 12) -> Calibration:
    """Temperatures and ensemble weights from out-of-fold well scores, one per ensemble member (`members`: each
    model's TTA mean logits, then any other scores such as embedding centroids).

    Weights, unless given: Caruana-style ensemble selection with replacement. Start from the best single model,
    then repeatedly add the model (possibly again) that raises the out-of-fold accuracy of the calibrated
    ensemble most (ties: lower NLL); stop when none does. A model that only hurts is never added, so the
    ensemble's out-of-fold accuracy is never below the best single model's."""
    models = list(members)
    temps = tuple(fit_temperature(ws, truth) for ws in models)
    cal = [temper(ws, t) for ws, t in zip(models, temps)]
    if weights is not None or len(models) == 1:
        return Calibration(temps, tuple(float(w) for w in (weights or [1.0])))

    def score(counts: np.ndarray) -> tuple[float, float]:
        ws = ensemble(cal, counts.tolist()) if counts.sum() else cal[0]
        labels = predict_labels(ws, sites).set_index("id_code")["sirna"]
        common = truth.index.intersection(labels.index)
        return float((labels.loc[common] == truth.loc[common]).mean()), -nll(ws, truth)

    counts = np.zeros(len(models))
    singles = [score(np.eye(len(models))[i]) for i in range(len(models))]
    counts[int(max(range(len(models)), key=lambda i: singles[i]))] = 1
    best = score(counts)
    for _ in range(max_rounds):
        trials = [(score(counts + np.eye(len(models))[i]), i) for i in range(len(models))]
        top, i = max(trials)
        if top <= best:
            break
        best, counts = top, counts + np.eye(len(models))[i]
    log.info("ensemble weights %s (out-of-fold accuracy %.4f; single models %s)", counts.tolist(), best[0],
             [round(s[0], 4) for s in singles])
    return Calibration(temps, tuple(float(c) for c in counts))


def members_of(models: Sequence[Any], sites: pd.DataFrame, extra: Sequence[WellScores] = (),
               groups: PlateGroupsLike | None = None) -> list[WellScores]:
    """The ensemble members: every model's TTA mean logits, then the `extra` well scores; with plate `groups`
    each centred per plate and per group (trainer.infer.rotation.centred_scores: what a plate-style shortcut adds is
    removed before calibration, ensembling and assignment - validation cannot show a shortcut that happened to
    point the right way there)."""
    members = [mean_logits(m.logits, m.index, sites, classes=m.classes) for m in models] + list(extra)
    return [centred_scores(ws, sites, groups) for ws in members] if groups is not None else members


def inference_steps(models: Sequence[Any], sites: pd.DataFrame, *, groups: PlateGroupsLike | None,
                    calibration: Calibration | None = None, stacker: Any | None = None,
                    stacker_scores: WellScores | None = None, min_z: float = 3.0,
                    extra: Sequence[WellScores] = (), balance: str = "none", meter: Meter | None = None,
                    split: str = "", records: Mapping[str, SourceRecord] | None = None,
                    centre: bool = True, rotation: str = "consensus") -> StepResults:
    """Every step's per-well labels for `models` (trainer.infer.predict.Predictions over the same sites) and `extra`
    well scores (embedding centroids, one step of their own and ensemble members).

    With a `calibration` each model's mean logits are tempered to log-probabilities before they are ensembled
    (with its weights) and before rotation inference; without one, raw mean logits, equal weights. The stacker
    step uses `stacker_scores` when given (e.g. cross-fitted out-of-fold scores on validation) or applies a
    fitted `stacker` (trainer.infer.stacker.Stacker) to models[0]. Plate assignment needs `groups`: every plate step
    uses the rotations `trainer.infer.rotation.decide_rotations` decides from `rotation_sources` (an experiment whose
    voting sources disagree or are unsure, below `min_z`, gets none: only "each class once per plate"), with
    `records` (the sources' validation record) giving each decision its reliability. With `centre` (and `groups`)
    the members are centred per plate and group first (members_of).
    `balance="sinkhorn"` balances each plate's scores before the mask and the assignment (trainer.infer.assign).
    `meter` times the aggregation, stacker, ensemble and assignment steps, named after `split`.
    """
    meter = meter or no_meter
    at = f"{split}: " if split else ""

    if not models:
        raise ConfigError("inference_steps needs at least one model's predictions")
    first = models[0]
    res = StepResults()

    def add(name: str, ws: WellScores) -> None:
        res.scores[name] = ws
        res.labels[name] = predict_labels(ws, sites, groups)

    with meter(f"{at}aggregation"):
        add("single view", single_view(first.logits, first.index, sites, classes=first.classes, view=first.view))
        means = members_of(models, sites, extra, groups if centre else None)
        add("TTA mean logits", means[0])
        add("TTA mean probs", mean_probs(first.logits, first.index, sites, classes=first.classes))
        add("TTA geometric mean", geometric_mean(first.logits, first.index, sites, classes=first.classes))
        add("TTA majority vote", majority_vote(first.logits, first.index, sites, classes=first.classes))
    if stacker_scores is not None:
        add("stacker", stacker_scores)
    elif stacker is not None:
        with meter(f"{at}stacker"):
            feats = build_features(first.logits, first.index, sites, classes=first.classes, top_k=stacker.top_k,
                                   candidates=stacker.candidates)
            add("stacker", stacker.predict(feats))
    if extra:
        add("embedding centroids", extra[0])
    with meter(f"{at}ensemble"):
        cal = [temper(ws, t) for ws, t in zip(means, calibration.temperatures)] if calibration else means
        final = cal[0]
        if len(means) > 1:
            final = ensemble(cal, calibration.weights if calibration else None)
            add("ensemble", final)
    with meter(f"{at}plate assignment"):
        if groups is not None:
            _plate_steps(res, models, extra, cal, final, sites, groups, min_z, balance, records, split, centre,
                         rotation)
    return res


def _adabn(preds: Any) -> bool:
    """Whether a Predictions (or a concatenation of them) was predicted with per-plate BatchNorm statistics."""
    meta = getattr(preds, "meta", {}) or {}
    parts = meta.get("parts")
    return bool(all(p.get("adabn") for p in parts)) if parts else bool(meta.get("adabn"))


def rotation_sources(models: Sequence[Any], extra: Sequence[WellScores], cal: Sequence[WellScores],
                     sites: pd.DataFrame, groups: PlateGroupsLike, *, centred: bool = False) -> list[RotationSource]:
    """Every source of rotation evidence (trainer.infer.rotation): each model's head as is (votes only with AdaBN) and
    centred per plate and group (votes), and each embedding-centroid member, centred the same way (votes).
    `cal`: the members' scores, models first (members_of's order); `centred`: they are centred already."""
    def centre(ws: WellScores) -> WellScores:
        return ws if centred else centred_scores(ws, sites, groups)

    out: list[RotationSource] = []
    for i, m in enumerate(models):
        tag = "" if i == 0 else f" (model {i + 1})"
        raw = mean_logits(m.logits, m.index, sites, classes=m.classes)
        out.append(RotationSource(f"TTA mean{tag}", rotation_evidence(raw, sites, groups), votes=_adabn(m)))
        out.append(RotationSource(f"TTA mean, centred{tag}", rotation_evidence(centre(cal[i]), sites, groups),
                                  votes=True))
    for j in range(len(extra)):
        tag = "" if j == 0 else f" (model {j + 1})"
        out.append(RotationSource(f"embedding centroids{tag}",
                                  rotation_evidence(centre(cal[len(models) + j]), sites, groups), votes=True))
    return out


def _plate_steps(res: StepResults, models: Sequence[Any], extra: Sequence[WellScores], cal: list[WellScores],
                 final: WellScores, sites: pd.DataFrame, groups: PlateGroupsLike, min_z: float, balance: str,
                 records: Mapping[str, SourceRecord] | None, split: str, centred: bool, mode: str) -> None:
    """The plate mask and plate assignment steps of each base (TTA mean, embedding centroids, ensemble), all
    with the rotations decided from every source (`mode` "own": each from its own scores' evidence), and each
    base's assignment without a rotation."""
    if mode not in ("consensus", "own"):
        raise ConfigError(f"rotation: expected 'consensus' or 'own', found {mode!r}")
    res.sources = rotation_sources(models, extra, cal, sites, groups, centred=centred)
    res.rotations = decide_rotations(res.sources, min_z=min_z, records=records)
    for exp, d in res.rotations.items():
        if d.status == "contested" or d.dissent:
            log.warning("%s%s: rotation evidence contested - %s", f"{split}: " if split else "", exp, d.why)
    rotations = {e: d.rotation for e, d in res.rotations.items() if d.rotation is not None}
    res.bases["TTA mean"] = (cal[0], PLATE_BASES["TTA mean"])
    if extra:
        res.bases["embedding centroids"] = (cal[len(models)], PLATE_BASES["embedding centroids"])
    if "ensemble" in res.labels:
        res.bases["ensemble"] = (final, PLATE_BASES["ensemble"])
    for base, (ws, _) in res.bases.items():
        a = assign_plates(ws, sites, groups, rotations=rotations if mode == "consensus" else None, min_z=min_z,
                          balance=balance)
        res.assignments[base + ASSIGN] = a
        res.labels[base + MASK] = a.masked  # impossible classes masked, argmax
        res.labels[base + ASSIGN] = a.predictions
    for base, (ws, _) in res.bases.items():
        res.labels[base + UNROTATED] = assign_plates(ws, sites, groups, rotations={}, balance=balance).predictions
