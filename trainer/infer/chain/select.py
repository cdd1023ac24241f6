"""Which step's test labels are submitted: the steps ranked by their expected test accuracy (trainer.infer.risk:
the validation figure discounted by the risk of each test rotation), ties within one well to the later step.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from cellio.errors import ConfigError

from trainer.infer.chain.steps import STEP_ORDER, StepResults
from trainer.infer.risk import Conditional, expected_accuracies

__all__ = ["rank_steps", "choose_submission"]


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


def choose_submission(test: StepResults, validation: dict[str, Any] | None, conditional: Mapping[str, Conditional],
                      sites: pd.DataFrame, select: str = "expected", contested: Sequence[str] = ()
                      ) -> tuple[str, dict[str, Any]]:
    """The step whose test labels are submitted: the best EXPECTED test accuracy (trainer.infer.risk: a rotation step's
    validation figure discounted by how sure each test rotation is) among the steps the test split has; with
    `select="validation"` the best validation accuracy (the best case). `validation`: the validation report
    (trainer.infer.report.build_report; each step's expected_test is added to it), None without out-of-fold
    predictions; `contested`: the test experiments whose rotation evidence is contested. Returns (the step, why)."""
    if select not in ("expected", "validation"):
        raise ConfigError(f"select: expected 'expected' or 'validation', found {select!r}")
    if validation is None:
        return test.final, {"step": test.final,
                            "why": "no out-of-fold predictions to rank the steps: the chain's last step"}
    report = validation
    accuracy = {name: float(v["accuracy"]) for name, v in report["steps"].items() if name in test.labels}
    expected = expected_accuracies(accuracy, conditional, test.rotations, sites,
                                   test.labels["TTA mean logits"]["id_code"])
    for name, value in expected.items():
        report["steps"][name]["expected_test"] = value
    ranking = rank_steps(expected if select == "expected" else accuracy, report["n_wells"])
    submitted = ranking[0][0]
    value = expected[submitted]
    runner = f"; runner-up {ranking[1][0]!r} {ranking[1][1]:.4f}" if len(ranking) > 1 else ""
    best_case = max(accuracy, key=lambda k: accuracy[k])
    out = {"step": submitted, "validation_accuracy": accuracy[submitted], "expected_test_accuracy": value,
           "why": f"highest expected test accuracy ({value:.4f}: its validation accuracy "
                  f"{accuracy[submitted]:.4f} on {report['n_wells']} wells, discounted by the risk of each test "
                  f"experiment's rotation{runner}; within one well the later step of the chain wins)",
           "ranking": [[name, v] for name, v in ranking],
           "contested": list(contested)}
    if best_case != submitted and accuracy[best_case] > accuracy[submitted]:
        out["best_case"] = {"step": best_case, "validation_accuracy": accuracy[best_case],
                            "expected_test_accuracy": expected[best_case]}
    return submitted, out
