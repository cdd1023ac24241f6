"""Accuracy against budget for a few main-job plans on one data set, and the plain peer beside them, in one run.

Each plan is the main job (`python -m trainer.demo`) on DATA with its own budget and `plan.<field>=value`
overrides, in its own OUT directory (a rerun skips finished plans); the peer is any script that prints
`test accuracy X` and `+ plate assignment Y` (the plain 50-line DenseNet the main-job issues quote). Runs are
sequential: on a small machine two at once would change each other's budgets.

    python benchmarks/plans.py DATA --out runs/plans \
        --plan default:14 --plan short:7 --plan crop160:7:crop=160 --plan one_stage:7:pseudo_share=0 \
        --plan arcface:14:loss.margin=arcface \
        --peer ../shared/peers/plain_densenet.py --peer-budget 480

Writes benchmarks/results/NAME.{csv,png} (and NAME_env.json; `--name`, default plans): per plan the budget, the
wall time, the 6-channel model's validation accuracy during training, and on validation and test the accuracy of
the TTA mean, of the best step after plate assignment and of the submitted step.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["plan", "budget_min", "wall_s", "overrides", "val_acc_training", "val_tta", "val_submitted",
           "test_tta", "test_tta_assigned", "test_submitted", "submitted_step"]


def parse_plan(text: str) -> tuple[str, float, list[str]]:
    """NAME:BUDGET[:field=value,section.key=value] -> (name, minutes, ["plan.field=value", "section.key=value"]):
    a plain field is a plan field, a dotted key a trainer config key (e.g. loss.margin=arcface)."""
    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[0]:
        raise SystemExit(f"--plan {text!r}: expected NAME:BUDGET_MINUTES[:field=value,...]")
    try:
        budget = float(parts[1])
    except ValueError:
        raise SystemExit(f"--plan {text!r}: budget {parts[1]!r} is not a number of minutes") from None
    items = [kv for kv in parts[2].split(",") if kv] if len(parts) == 3 else []
    overrides = [kv if "." in kv.split("=", 1)[0] else f"plan.{kv}" for kv in items]
    return parts[0], budget, overrides


def run_plan(data: Path, out: Path, budget: float, overrides: list[str]) -> float:
    """The main job for one plan; its wall time (0 when a finished run was reused)."""
    if (out / "report.json").is_file():
        return json.loads((out / "report.json").read_text())["timings_s"]["total"]
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "trainer.demo", "--data", str(data), "--out", str(out), "--budget", str(budget),
           *overrides, "train.progress=false"]
    print("$", " ".join(cmd), flush=True)
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(cmd, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def plan_row(name: str, budget: float, overrides: list[str], wall: float, report: dict[str, Any]) -> dict[str, Any]:
    def acc(split: str, step: str) -> float:
        return report["splits"].get(split, {}).get("steps", {}).get(step, {}).get("accuracy", float("nan"))

    test = report["splits"].get("test", {}).get("steps", {})
    assigned = [s for s in test if s.endswith("plate assignment")]
    submitted = report["submission"]["step"]
    training = report["training"].get("single", {})
    return {"plan": name, "budget_min": budget, "wall_s": round(wall, 1), "overrides": " ".join(overrides),
            "val_acc_training": training.get("val_acc", float("nan")),
            "val_tta": acc("validation", "TTA mean logits"), "val_submitted": acc("validation", submitted),
            "test_tta": acc("test", "TTA mean logits"),
            "test_tta_assigned": acc("test", "TTA mean + plate assignment"),
            "test_submitted": acc("test", submitted), "submitted_step": submitted,
            "best_test_assigned": max((acc("test", s) for s in assigned), default=float("nan"))}


def run_peer(script: Path, data: Path, budget_s: int, log: Path) -> dict[str, Any]:
    """The peer script's printed test accuracy before and after plate assignment."""
    if log.is_file() and "plate assignment" in log.read_text():
        text, wall = log.read_text(), float("nan")
    else:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script), str(data)], env={**os.environ, "BUDGET": str(budget_s)},
                              capture_output=True, text=True, check=True)
        text, wall = proc.stdout + proc.stderr, time.perf_counter() - t0
        log.write_text(text)
    before = re.search(r"test accuracy ([0-9.]+)", text)
    after = re.search(r"plate assignment ([0-9.]+)", text)
    if not (before and after):
        raise SystemExit(f"{script}: expected 'test accuracy X' and '+ plate assignment Y' in its output ({log})")
    return {"plan": f"peer {script.name}", "budget_min": budget_s / 60, "wall_s": round(wall, 1),
            "overrides": "", "test_tta": float(before.group(1)), "test_submitted": float(after.group(1)),
            "submitted_step": "its TTA + plate assignment"}


def write(rows: list[dict[str, Any]], data: Path, name: str = "plans") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    cols = COLUMNS + ["best_test_assigned"]
    with open(RESULTS / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (RESULTS / f"{name}_env.json").write_text(json.dumps(environment(data=str(data)), indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["plan"] for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r.get("test_tta", float("nan")) for r in rows], 0.4, label="test, TTA mean")
    ax.bar([i + 0.2 for i in x], [r.get("test_submitted", float("nan")) for r in rows], 0.4,
           label="test, submitted step")
    ax.set_xticks(list(x), [f"{n}\n{r['budget_min']:.0f} min" for n, r in zip(names, rows)], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.set_title(f"main-job plans vs the plain peer on {data.name}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path, help="an RxRx1-layout directory with test_truth.csv")
    p.add_argument("--out", type=Path, default=Path("runs/plans"))
    p.add_argument("--plan", action="append", default=[], help="NAME:BUDGET_MINUTES[:field=value,...] (repeat)")
    p.add_argument("--peer", type=Path, help="a peer script: SCRIPT DATA, BUDGET= seconds in the environment")
    p.add_argument("--peer-budget", type=int, default=480, help="seconds of training for the peer")
    p.add_argument("--name", default="plans", help="results file stem: benchmarks/results/NAME.{csv,png}")
    a = p.parse_args(argv)
    if not (a.data / "test_truth.csv").is_file():
        raise SystemExit(f"{a.data}: expected test_truth.csv (id_code, sirna) to score test accuracy")
    plans = [parse_plan(t) for t in a.plan] or [("default", 14.0, [])]
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, budget, overrides in plans:
        out = a.out / name
        wall = run_plan(a.data, out, budget, overrides)
        rows.append(plan_row(name, budget, overrides, wall, json.loads((out / "report.json").read_text())))
        print(json.dumps(rows[-1]), flush=True)
    if a.peer:
        rows.append(run_peer(a.peer, a.data, a.peer_budget, a.out / "peer.log"))
        print(json.dumps(rows[-1]), flush=True)
    write(rows, a.data, a.name)
    print(f"{'plan':<14}{'budget':>7}{'wall s':>8}{'val TTA':>9}{'val sub':>9}{'test TTA':>9}{'TTA+asg':>9}"
          f"{'test sub':>9}  submitted step")
    for r in rows:
        f = {k: r.get(k, float("nan")) for k in COLUMNS}
        print(f"{r['plan']:<14}{f['budget_min']:>7.1f}{f['wall_s']:>8.0f}{f['val_tta']:>9.3f}"
              f"{f['val_submitted']:>9.3f}{f['test_tta']:>9.3f}{f['test_tta_assigned']:>9.3f}"
              f"{f['test_submitted']:>9.3f}  {r['submitted_step']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
