"""Two main-job runs side by side: are the step figures of report.json and submission.csv the same?

For a change that must not move the main job's results (a restructuring), run the job from both commits with the
same fixed steps (a step count instead of a time budget, so machine load cannot change the training):

    git worktree add /tmp/before BEFORE_COMMIT
    (cd /tmp/before && python -m trainer.demo --out /tmp/run_before --profile quick plan.steps_single=60 \
        plan.steps_pseudo=0 train.progress=false)
    python -m trainer.demo --out /tmp/run_after --profile quick plan.steps_single=60 plan.steps_pseudo=0 \
        train.progress=false
    python benchmarks/compare_main_job.py /tmp/run_before /tmp/run_after

Prints each split's step accuracies where they differ (or that none does) and whether the submissions are
byte-identical; exits 1 when anything differs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def step_figures(report: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """split -> step -> accuracy, from report.json's `splits` section."""
    return {split: {name: step.get("accuracy") for name, step in sec.get("steps", {}).items()}
            for split, sec in report.get("splits", {}).items()}


def compare(before: Path, after: Path) -> list[str]:
    """The differences between two main-job output directories, one line each (empty: the same results)."""
    diffs = []
    figures = [step_figures(json.loads((d / "report.json").read_text())) for d in (before, after)]
    for split in sorted(set(figures[0]) | set(figures[1])):
        b, a = figures[0].get(split, {}), figures[1].get(split, {})
        for step in sorted(set(b) | set(a)):
            if b.get(step) != a.get(step):
                diffs.append(f"{split} / {step}: {b.get(step)} -> {a.get(step)}")
    sub = [(d / "submission.csv").read_bytes() if (d / "submission.csv").is_file() else None for d in (before, after)]
    if sub[0] != sub[1]:
        diffs.append("submission.csv differs" if None not in sub else "submission.csv missing on one side")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path, help="the first run's --out directory")
    parser.add_argument("after", type=Path, help="the second run's --out directory")
    args = parser.parse_args(argv)
    diffs = compare(args.before, args.after)
    n = sum(len(v) for v in step_figures(json.loads((args.before / "report.json").read_text())).values())
    if diffs:
        print("\n".join(diffs))
        return 1
    print(f"the same: {n} step figures of report.json, and submission.csv byte for byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
