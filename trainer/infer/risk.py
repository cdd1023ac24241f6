"""What a step's validation accuracy promises for test, once the test rotations' own risk is counted.

A plate-assignment step's validation figure is a best case: it was measured where the held-out experiments'
rotations came out right. On a test experiment whose rotation is wrong the same step scores ~0 (the mask removes
every true class). So for every step that masks with a rotation we measure, on validation:

- `right`: its accuracy with every validation experiment's TRUE rotation;
- `wrong`: its accuracy with the wrong rotation the voting sources like best (a confident mistake);
- `none`: its accuracy with no rotation (the plate mask becomes the plain argmax; the assignment keeps only
  "each class at most once per plate");

and score each step by its EXPECTED test accuracy: over the test experiments, weighted by their treatment wells,
`reliability * right + (1 - reliability) * wrong` where the test experiment got a rotation (its decision's
reliability, trainer.infer.rotation) and `none` where it got none (contested or ambiguous). A step that uses no rotation
is expected to score its validation accuracy.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from trainer.infer.aggregate import WellScores
from trainer.infer.assign import assign_plates
from trainer.infer.rotation import CONTROL_TYPES, PlateGroupsLike, RotationDecision, RotationSource, wrong_rotations

__all__ = ["MASK", "ASSIGN", "UNROTATED", "rotation_steps", "Conditional", "conditional_accuracies",
           "expected_accuracies", "summary"]

MASK, ASSIGN, UNROTATED = " + plate mask", " + plate assignment", " + plate assignment, no rotation"


def rotation_steps(base: str, plain: str) -> dict[str, str]:
    """The steps of one base that use a rotation -> the step each becomes without one."""
    return {base + MASK: plain, base + ASSIGN: base + UNROTATED}


@dataclass(frozen=True)
class Conditional:
    """A rotation step's validation accuracy with the true rotations, with confidently wrong ones, and with none."""

    right: float
    wrong: float
    none: float

    def expected(self, reliability: float) -> float:
        return reliability * self.right + (1.0 - reliability) * self.wrong

    def to_dict(self) -> dict[str, float]:
        return {"if_rotation_right": self.right, "if_rotation_wrong": self.wrong, "without_rotation": self.none}


def _accuracy(labels: pd.DataFrame, truth: pd.Series) -> float:
    got = labels.set_index("id_code")["sirna"].reindex(truth.index)
    return float((got.to_numpy(dtype="float64", na_value=np.nan) == truth.to_numpy()).mean())


def conditional_accuracies(bases: Mapping[str, tuple[WellScores, str]], labels: Mapping[str, pd.DataFrame],
                           sites: pd.DataFrame, groups: PlateGroupsLike, truth: pd.Series,
                           known: Mapping[str, int], sources: Sequence[RotationSource], *,
                           balance: str = "none") -> dict[str, Conditional]:
    """step -> Conditional for every rotation step of `bases` (base name -> (its well scores, the name of its
    plain argmax step)); `labels`: the split's step labels (for the no-rotation counterparts); `known`: the true
    rotation of each scored experiment; `truth`: the labels of the scored treatment wells."""
    exps = sorted({e for e in known if e in set(sites.loc[sites["id_code"].isin(truth.index), "experiment"])})
    true = {e: int(known[e]) for e in exps}
    wrong = wrong_rotations(sources, true)
    out: dict[str, Conditional] = {}
    for base, (ws, plain) in bases.items():
        right_a = assign_plates(ws, sites, groups, rotations=true, balance=balance)
        wrong_a = assign_plates(ws, sites, groups, rotations=wrong, balance=balance)
        for step, unrotated in rotation_steps(base, plain).items():
            if step not in labels or unrotated not in labels:
                continue
            pick = (lambda a: a.masked) if step.endswith(MASK) else (lambda a: a.predictions)
            out[step] = Conditional(_accuracy(pick(right_a), truth), _accuracy(pick(wrong_a), truth),
                                    _accuracy(labels[unrotated], truth))
    return out


def expected_accuracies(validation: Mapping[str, float], conditional: Mapping[str, Conditional],
                        decisions: Mapping[str, RotationDecision], sites: pd.DataFrame,
                        wells: Sequence[str]) -> dict[str, float]:
    """step -> expected test accuracy. `validation`: step -> validation accuracy; `decisions`: the test
    experiments' rotations; `wells`: the test wells (weights: each experiment's treatment wells among them)."""
    meta = sites.drop_duplicates("id_code").set_index("id_code").loc[list(wells)]
    treat = meta[~meta["well_type"].isin(CONTROL_TYPES)]
    weight = treat.groupby("experiment").size()
    total = float(weight.sum())
    out: dict[str, float] = {}
    for step, acc in validation.items():
        if step not in conditional or total == 0:
            out[step] = float(acc)
            continue
        c = conditional[step]
        value = 0.0
        for exp, n in weight.items():
            d = decisions.get(str(exp))
            if d is None or d.rotation is None:
                value += n * c.none
            else:  # no validation record: a coin flip between right and wrong
                value += n * c.expected(d.reliability if d.reliability is not None else 0.5)
        out[step] = value / total
    return out


def summary(conditional: Mapping[str, Conditional], expected: Mapping[str, float]) -> dict[str, Any]:
    """JSON-able: per step its conditional accuracies and expected test accuracy."""
    return {step: {**(conditional[step].to_dict() if step in conditional else {}), "expected_test": value}
            for step, value in expected.items()}
