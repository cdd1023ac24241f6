"""The inference chain over both splits: every step on validation (out of fold) and on test, the step to submit
chosen by validation, and the files: submission.csv, test_predictions.csv, report.json (+ plots), assignment.json.

    result = run_chain(ChainInputs(sites, val=[oof_a, oof_b], test=[test_a, test_b],
                                   sample_submission="data/sample_submission.csv"), out="out/inference")
    result.submitted, result.reports["validation"]       # the submitted step; accuracy of every step

One split's steps are trainer/infer/chain/steps.py, the choice of the submitted step select.py; the command line
(`python -m trainer.infer.chain`) __main__.py.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellio.errors import CellioError, ConfigError

from trainer.infer.aggregate import WellScores
from trainer.infer.chain.select import choose_submission
from trainer.infer.chain.steps import Meter, StepResults, fit_calibration, inference_steps, members_of, no_meter
from trainer.infer.embed import centroid_scores
from trainer.infer.report import build_report, truth_of, write_report
from trainer.infer.risk import Conditional, conditional_accuracies
from trainer.infer.rotation import SourceRecord, score_sources
from trainer.infer.stacker import build_features, cross_fit, fit_stacker
from trainer.infer.submission import write_submission
from trainer.training.layout import plate_constraint

__all__ = ["ChainInputs", "ChainResult", "run_chain", "wells_of"]

log = logging.getLogger(__name__)


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


def run_chain(inputs: ChainInputs, out: str | Path, meter: Meter | None = None) -> ChainResult:
    """Every step on validation (out of fold) and test; the test labels of the step validation ranks first go to
    OUT/submission.csv (report.json says which and why); also test_predictions.csv, report.json (+ plots) and
    assignment.json. `meter` times each step (chain/steps.py: Meter)."""
    meter = meter or no_meter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sites, res = inputs.sites, ChainResult()
    res.extra.update(inputs.notes)
    groups, why = plate_constraint(sites)
    if groups is None:  # no 4-group plate structure in this data set: no assignment steps
        log.warning("plate assignment skipped: %s", why)
        res.extra["assignment_skipped"] = why
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
        res.submitted, res.extra["submission"] = choose_submission(
            res.test, res.reports.get("validation"), conditional, sites, inputs.select,
            contested=res.extra["rotation"]["test"]["contested"])
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


def wells_of(preds: Any, sites: pd.DataFrame) -> list[str]:
    """The wells a Predictions covers, sorted."""
    return sorted(set(sites["id_code"].to_numpy()[preds.index]))


def _centroids(inputs: ChainInputs, targets: list[str], *, held_out: bool) -> list[WellScores]:
    """Embedding-centroid scores of `targets` for every model with embeddings. Out of fold (`held_out`) the
    class centres come only from experiments other than the targets'; for test, from every labelled train well."""
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
    assert res.test is not None and res.submitted is not None
    labels = res.test.labels[res.submitted]
    labels.to_csv(out / "test_predictions.csv", index=False)
    if inputs.test_truth:
        test_ids = set(labels["id_code"])
        res.reports["test"] = build_report(res.test.labels, truth[truth.index.isin(test_ids)])
    if inputs.sample_submission:
        res.submission = write_submission(labels, inputs.sites, inputs.sample_submission, out / "submission.csv")
