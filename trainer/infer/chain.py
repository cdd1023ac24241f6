"""The inference chain, step by step: single view -> TTA (mean logits / mean probs / geometric mean / vote) ->
LightGBM stacker -> model ensemble -> + plate assignment, with per-well labels for every step so the report can
put them side by side, and the submission.

    result = run_chain(ChainInputs(sites, val=[oof_a, oof_b], test=[test_a, test_b],
                                   sample_submission="data/sample_submission.csv"), out="out/inference")
    result.submitted, result.reports["validation"]       # the submitted step; accuracy of every step

`inference_steps` is one split's chain (no files): `models[0]` is the primary model (the single-model steps use
it); the ensemble averages the mean logits of every model, aligned by sirna. Every step's labels come from
`trainer.infer.assign.predict_labels` (treatment wells over treatment classes only, controls keep their given labels) or
from plate assignment.

    python -m trainer.infer.chain --store rxrx1.zarr --val-predictions oof_s0.npz oof_s1.npz \
        --test-predictions test_s0.npz test_s1.npz --sample-submission data/sample_submission.csv \
        [--test-truth data/test_truth.csv] --out out/inference
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellio.errors import CellioError, ConfigError

from trainer.infer.aggregate import (WellScores, ensemble, geometric_mean, majority_vote, mean_logits, mean_probs,
                               single_view)
from trainer.infer.assign import Assignment, assign_plates, predict_labels
from trainer.infer.risk import (ASSIGN, MASK, UNROTATED, Conditional, conditional_accuracies, expected_accuracies)
from trainer.infer.rotation import (PlateGroupsLike, RotationDecision, RotationSource, SourceRecord, decide_rotations,
                              centred_scores, rotation_evidence, score_sources)

__all__ = ["STEP_ORDER", "StepResults", "Calibration", "fit_calibration", "members_of", "rotation_sources",
           "inference_steps", "rank_steps", "wells_of",
           "truth_of", "ChainInputs", "ChainResult", "run_chain", "main"]

log = logging.getLogger(__name__)

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
    from trainer.infer.calibrate import fit_temperature, nll, temper

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
                    extra: Sequence[WellScores] = (), balance: str = "none", meter: Any = None,
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
    `meter` (trainer.job.meter) times the aggregation, stacker, ensemble and assignment steps, named after `split`.
    """
    from trainer.infer.calibrate import temper
    from trainer.job.meter import no_meter
    from trainer.infer.stacker import build_features

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


def rank_steps(values: Mapping[str, float], n_wells: int, tie_wells: float = 1.0) -> list[tuple[str, float]]:
    """Steps by `values` (an accuracy, or an expected accuracy, per step), best first. Values within `tie_wells`
    wells of `n_wells` of each other (one well by default: below what a validation set can tell apart) count as a
    tie, which goes to the later step of STEP_ORDER (assignment after mask after ensemble ...; the steps without
    a rotation last)."""
    order = {name: i for i, name in enumerate(STEP_ORDER)}
    tol = tie_wells / max(int(n_wells), 1) + 1e-12
    ranked: list[tuple[str, float]] = []
    rest = sorted(((name, float(v)) for name, v in values.items()), key=lambda nv: -nv[1])
    while rest:
        top = rest[0][1]
        tied = [nv for nv in rest if nv[1] >= top - tol]
        pick = max(tied, key=lambda nv: order.get(nv[0], -1))
        ranked.append(pick)
        rest.remove(pick)
    return ranked


def truth_of(sites: pd.DataFrame, test_truth: str | Path | None = None) -> pd.Series:
    """Labels of treatment wells: from the site table (train) plus, when given, a synthetic set's test_truth.csv."""
    lab = sites[(sites["well_type"] == "treatment") & sites["sirna"].notna()].drop_duplicates("id_code")
    truth = pd.Series(lab["sirna"].to_numpy(dtype=np.int64), index=lab["id_code"].to_numpy())
    if test_truth is not None:
        from trainer.infer.report import read_truth

        truth = pd.concat([truth, read_truth(test_truth)])
        truth = truth[~truth.index.duplicated(keep="last")]
    return truth


@dataclass(frozen=True)
class ChainInputs:
    """Per-view predictions of one or more models (`trainer.infer.predict.Predictions`; the first is the primary model)
    over the sites of one store."""

    sites: pd.DataFrame                          # the store's site table (what Predictions.index refers to)
    val: Sequence[Any] = ()                      # out-of-fold predictions, one per model (its folds concatenated)
    test: Sequence[Any] = ()                     # test predictions, one per model, same order
    weights: Sequence[float] | None = None       # ensemble weights, one per model (default: chosen out of fold)
    min_z: float = 3.0                           # rotation evidence below this: fall back (trainer.infer.assign)
    balance: str = "none"                        # "sinkhorn": balance each plate before mask and assignment
    top_k: int = 10                              # stacker candidates per well
    seed: int = 0
    sample_submission: str | Path | None = None  # write submission.csv in this file's rows
    test_truth: str | Path | None = None         # a synthetic set's test labels: score the test steps too
    embeddings: Sequence[Any] = ()               # trainer.infer.embed.WellEmbeddings of every well, one per model
    val_embeddings: Sequence[Any] = ()           # for the out-of-fold centroids, when other models made `val`
                                                 # than `test` (a refit on every experiment); default: embeddings
    whiten: bool = True                          # centroids under the within-class covariance (trainer.infer.embed)
    centre: bool = True                          # members centred per plate and group (members_of)
    rotation: str = "consensus"                  # "own": each plate step from its own scores' evidence (before
                                                 # issue 20; kept for the ablation, benchmarks/chain_ablation.py)
    select: str = "expected"                     # submit the best "expected" test accuracy, or the best
                                                 # "validation" accuracy (the best case; before issue 20)
    notes: dict[str, Any] = field(default_factory=dict)  # more for report.json (the plan, training metrics)


@dataclass
class ChainResult:
    validation: StepResults | None = None
    test: StepResults | None = None
    reports: dict[str, Any] = field(default_factory=dict)  # split -> trainer.infer.report.build_report
    extra: dict[str, Any] = field(default_factory=dict)    # assignment summaries, skipped steps
    submitted: str | None = None                           # the step written to submission.csv
    submission: pd.DataFrame | None = None


def run_chain(inputs: ChainInputs, out: str | Path, meter: Any = None) -> ChainResult:
    """Every step on validation (out of fold) and test; the test labels of the step validation ranks first go to
    OUT/submission.csv (report.json says which and why); also test_predictions.csv, report.json (+ plots) and
    assignment.json. `meter` (trainer.job.meter) times each step."""
    import cellio
    from trainer.job.meter import no_meter
    from trainer.infer.report import build_report, write_report

    meter = meter or no_meter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sites, res = inputs.sites, ChainResult()
    res.extra.update(inputs.notes)
    try:
        groups = cellio.derive_plate_groups(sites[sites["dataset"] == "train"])
    except CellioError as exc:  # no 4-group plate structure in this data set: no assignment steps
        log.warning("plate assignment skipped: %s", exc)
        res.extra["assignment_skipped"] = str(exc)
        groups = None
    truth = truth_of(sites, inputs.test_truth)
    stacker, calibration = None, None
    records: dict[str, SourceRecord] | None = None
    conditional: dict[str, Conditional] = {}
    if inputs.val:
        with meter("validation: stacker (cross-fit + fit)"):
            stacker, cv = _stacker(inputs, truth, res.extra)
        with meter("validation: embedding centroids"):
            val_extra = _centroids(inputs, wells_of(inputs.val[0], sites), held_out=True)
        with meter("validation: calibration, ensemble weights"):
            calibration = fit_calibration(members_of(inputs.val, sites, val_extra,
                                                     groups if inputs.centre else None), sites, truth,
                                          weights=inputs.weights)
        res.extra["calibration"] = calibration.to_dict()
        res.validation = inference_steps(inputs.val, sites, groups=groups, calibration=calibration,
                                         stacker_scores=cv, min_z=inputs.min_z, extra=val_extra,
                                         balance=inputs.balance, meter=meter, split="validation",
                                         centre=inputs.centre, rotation=inputs.rotation)
        val_ids = res.validation.labels["TTA mean logits"]["id_code"]
        val_truth = truth[truth.index.isin(val_ids)]
        res.reports["validation"] = build_report(res.validation.labels, val_truth)
        res.extra["validation_assignment"] = {k: a.summary(known=groups.rotations if groups else None)
                                              for k, a in res.validation.assignments.items()}
        if groups is not None:
            with meter("validation: rotation risk"):
                records, conditional = _rotation_record(res, groups, val_truth, inputs)
    if inputs.test:
        if inputs.val and len(inputs.val) != len(inputs.test):
            raise ConfigError(f"{len(inputs.val)} models have validation predictions but {len(inputs.test)} have "
                              "test predictions; give both for every model, in the same order")
        with meter("test: embedding centroids"):
            test_extra = _centroids(inputs, wells_of(inputs.test[0], sites), held_out=False)
        res.test = inference_steps(inputs.test, sites, groups=groups, calibration=calibration, stacker=stacker,
                                   min_z=inputs.min_z, extra=test_extra, balance=inputs.balance, meter=meter,
                                   split="test", records=records, centre=inputs.centre,
                                   rotation=inputs.rotation)
        res.extra["test_assignment"] = {k: a.summary() for k, a in res.test.assignments.items()}
        res.extra.setdefault("rotation", {})["test"] = _decisions_summary(res.test)
        res.extra["submission"] = _choose_submission(res, conditional, sites, inputs.select)
        with meter("submission"):
            _submit(inputs, res, truth, out)
    if res.reports:
        with meter("report"):
            write_report(res.reports, out, extra=res.extra)
    (out / "assignment.json").write_text(json.dumps(res.extra, indent=2))
    return res


def _decisions_summary(steps: StepResults, known: Mapping[str, int] | None = None) -> dict[str, Any]:
    decisions = {e: {**d.to_dict(), **({"true": int(known[e]), "right": d.rotation == int(known[e])}
                                        if known and e in known else {})}
                 for e, d in steps.rotations.items()}
    return {"decisions": decisions,
            "contested": sorted(e for e, d in steps.rotations.items() if d.status == "contested"),
            "without_rotation": sorted(e for e, d in steps.rotations.items() if d.rotation is None)}


def _rotation_record(res: ChainResult, groups: Any, val_truth: pd.Series, inputs: ChainInputs
                     ) -> tuple[dict[str, SourceRecord], dict[str, Conditional]]:
    """On validation (whose rotations are known): how often each source picked the right rotation, and every
    rotation step's accuracy with right, wrong and no rotations (trainer.infer.risk)."""
    assert res.validation is not None
    known = {e: int(r) for e, r in groups.rotations.items()}
    records = score_sources(res.validation.sources, known, min_z=inputs.min_z)
    conditional = conditional_accuracies(res.validation.bases, res.validation.labels, inputs.sites, groups,
                                         val_truth, known, res.validation.sources, balance=inputs.balance)
    res.extra["rotation"] = {"validation": {"sources": {k: r.to_dict() for k, r in records.items()},
                                            **_decisions_summary(res.validation, known)}}
    for step, c in conditional.items():
        res.reports["validation"]["steps"][step].update(c.to_dict())
    return records, conditional
def _choose_submission(res: ChainResult, conditional: Mapping[str, Conditional], sites: pd.DataFrame,
                       select: str = "expected") -> dict[str, Any]:
    """The step whose test labels are submitted: the best EXPECTED test accuracy (trainer.infer.risk: a rotation step's
    validation figure discounted by how sure each test rotation is) among the steps the test split has; with
    `select="validation"` the best validation accuracy (the best case)."""
    if select not in ("expected", "validation"):
        raise ConfigError(f"select: expected 'expected' or 'validation', found {select!r}")
    assert res.test is not None
    if "validation" not in res.reports:
        res.submitted = res.test.final
        return {"step": res.submitted, "why": "no out-of-fold predictions to rank the steps: the chain's last step"}
    report = res.reports["validation"]
    accuracy = {name: float(v["accuracy"]) for name, v in report["steps"].items() if name in res.test.labels}
    expected = expected_accuracies(accuracy, conditional, res.test.rotations, sites,
                                   res.test.labels["TTA mean logits"]["id_code"])
    for name, value in expected.items():
        report["steps"][name]["expected_test"] = value
    ranking = rank_steps(expected if select == "expected" else accuracy, report["n_wells"])
    res.submitted, value = ranking[0]
    value = expected[res.submitted]
    runner = f"; runner-up {ranking[1][0]!r} {ranking[1][1]:.4f}" if len(ranking) > 1 else ""
    best_case = max(accuracy, key=lambda k: accuracy[k])
    out = {"step": res.submitted, "validation_accuracy": accuracy[res.submitted], "expected_test_accuracy": value,
           "why": f"highest expected test accuracy ({value:.4f}: its validation accuracy "
                  f"{accuracy[res.submitted]:.4f} on {report['n_wells']} wells, discounted by the risk of each test "
                  f"experiment's rotation{runner}; within one well the later step of the chain wins)",
           "ranking": [[name, v] for name, v in ranking],
           "contested": res.extra.get("rotation", {}).get("test", {}).get("contested", [])}
    if best_case != res.submitted and accuracy[best_case] > accuracy[res.submitted]:
        out["best_case"] = {"step": best_case, "validation_accuracy": accuracy[best_case],
                            "expected_test_accuracy": expected[best_case]}
    return out


def wells_of(preds: Any, sites: pd.DataFrame) -> list[str]:
    """The wells a Predictions covers, sorted."""
    return sorted(set(sites["id_code"].to_numpy()[preds.index]))


def _centroids(inputs: ChainInputs, targets: list[str], *, held_out: bool) -> list[WellScores]:
    """Embedding-centroid scores of `targets` for every model with embeddings. Out of fold (`held_out`) the
    class centres come only from experiments other than the targets'; for test, from every labelled train well."""
    from trainer.infer.embed import centroid_scores

    embeddings = (inputs.val_embeddings or inputs.embeddings) if held_out else inputs.embeddings
    if not embeddings:
        return []
    sites = inputs.sites
    wells = sites.drop_duplicates("id_code")
    labelled = wells[(wells["dataset"] == "train") & wells["sirna"].notna()]
    if held_out:
        exps = set(sites.loc[sites["id_code"].isin(targets), "experiment"])
        labelled = labelled[~labelled["experiment"].isin(exps)]
    return [centroid_scores(e, sites, reference=labelled["id_code"].tolist(), targets=targets,
                            whiten=inputs.whiten) for e in embeddings]


def _stacker(inputs: ChainInputs, truth: pd.Series, extra: dict[str, Any]) -> tuple[Any, WellScores | None]:
    """The stacker fitted on the primary model's out-of-fold views, and its cross-fitted validation scores."""
    from trainer.infer.stacker import build_features, cross_fit, fit_stacker

    first = inputs.val[0]
    treatments = np.unique(truth.to_numpy())  # treatment wells' labels: candidates never include controls
    feats = build_features(first.logits, first.index, inputs.sites, classes=first.classes, top_k=inputs.top_k,
                           candidates=treatments)
    try:
        cv = cross_fit(feats, truth, seed=inputs.seed)
        return fit_stacker(feats, truth, seed=inputs.seed), cv
    except CellioError as exc:  # too few labelled wells/experiments: the other steps still run
        log.warning("stacker skipped: %s", exc)
        extra["stacker_skipped"] = str(exc)
        return None, None


def _submit(inputs: ChainInputs, res: ChainResult, truth: pd.Series, out: Path) -> None:
    from trainer.infer.report import build_report
    from trainer.infer.submission import write_submission

    assert res.test is not None and res.submitted is not None
    labels = res.test.labels[res.submitted]
    labels.to_csv(out / "test_predictions.csv", index=False)
    if inputs.test_truth:
        test_ids = set(labels["id_code"])
        res.reports["test"] = build_report(res.test.labels, truth[truth.index.isin(test_ids)])
    if inputs.sample_submission:
        res.submission = write_submission(labels, inputs.sites, inputs.sample_submission, out / "submission.csv")


def main(argv: Sequence[str] | None = None) -> int:
    from trainer.infer.aggregate import load_sites
    from trainer.infer.predict import concat_predictions, load_predictions
    from trainer.infer.report import format_table

    p = argparse.ArgumentParser(prog="python -m trainer.infer.chain", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="the store every predictions file refers to")
    p.add_argument("--val-predictions", nargs="+", default=[],
                   help="out-of-fold per-view files, one per model; a model's fold files joined by commas "
                        "(f0.npz,f1.npz from trainer.infer.predict --datasets validation); first = primary model")
    p.add_argument("--test-predictions", nargs="+", default=[], help="test per-view files, one per model")
    p.add_argument("--weights", type=float, nargs="+", help="ensemble weights, one per model")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--sample-submission", help="write submission.csv checked against this file")
    p.add_argument("--test-truth", help="test_truth.csv of a synthetic set: score the test steps too")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--balance", choices=["none", "sinkhorn"], default="none",
                   help="balance each plate's scores (Sinkhorn) before the plate mask and assignment")
    p.add_argument("--rotation", choices=["consensus", "own"], default="consensus",
                   help="plate-group rotations from every source that cannot see plate style (consensus), or each "
                        "plate step from its own scores (own: before issue 20)")
    p.add_argument("--select", choices=["expected", "validation"], default="expected",
                   help="submit the step with the best expected test accuracy, or the best validation accuracy")
    p.add_argument("--no-centre", action="store_true",
                   help="do not centre the members per plate and group before calibration and assignment")
    p.add_argument("--out", required=True, help="output directory")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    val = [concat_predictions([load_predictions(f) for f in item.split(",")]) for item in args.val_predictions]
    test = [load_predictions(f) for f in args.test_predictions]
    result = run_chain(ChainInputs(load_sites(args.store), val, test, weights=args.weights, top_k=args.top_k,
                                   seed=args.seed, sample_submission=args.sample_submission,
                                   test_truth=args.test_truth, balance=args.balance, centre=not args.no_centre,
                                   rotation=args.rotation, select=args.select), args.out)
    if result.submission is not None:
        print(f"submission ({result.submitted}) -> {Path(args.out) / 'submission.csv'}")
    if result.reports:
        print(format_table(result.reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
