"""The inference chain's issue-20 switches, one at a time, offline on one main-job run's predictions.

Reads a finished `python -m trainer.demo` OUT directory (its store, plan, predictions and embeddings, and the raw
set's test_truth.csv) and reruns the chain (trainer.infer.chain.run_chain) under each variant, so every row shares the
same checkpoint:

- before:        each plate step's rotation from its own scores (the z-score guard), the step validation ranks
                 first submitted, members as predicted (the chain before issue 20, without its member fallbacks)
- consensus:     rotations from the sources that cannot see plate style (trainer.infer.rotation)
- + expected:    the submitted step chosen by its expected test accuracy (trainer.infer.risk)
- + centred:     members centred per plate and group before calibration (the default chain, "now")

    python benchmarks/chain_ablation.py OUT [--data RAW] [--name chain_ablation]

Writes benchmarks/results/NAME.{csv,png}: per variant the submitted step, its validation and expected accuracy,
its test accuracy, each test experiment's accuracy, and whether each test rotation was right.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment  # noqa: E402

VARIANTS = {
    "before": dict(rotation="own", select="validation", centre=False),
    "consensus": dict(rotation="consensus", select="validation", centre=False),
    "+ expected": dict(rotation="consensus", select="expected", centre=False),
    "+ centred (now)": dict(rotation="consensus", select="expected", centre=True),
}
COLUMNS = ["variant", "submitted", "validation", "expected", "test", "test_per_experiment", "test_rotations"]


def load_inputs(run: Path, data: Path | None) -> dict:
    """The chain's inputs of a main-job run, as the job built them (joint model only)."""
    import cellio
    from trainer.infer.embed import WellEmbeddings
    from trainer.infer.predict import load_predictions

    plan = json.loads((run / "plan.json").read_text())
    raw = data or run / "raw"
    store = cellio.open_store(run / "store.zarr")
    pred = run / "predictions"
    with np.load(pred / "embeddings.npz", allow_pickle=False) as z:
        emb = WellEmbeddings(z["id_codes"].astype(object), z["vectors"])
    truth = raw / "test_truth.csv"
    if not truth.is_file():
        raise SystemExit(f"{truth} is missing: the ablation scores test accuracy, it needs a synthetic set's truth")
    return dict(sites=store.sites, val=[load_predictions(pred / "model_validation.npz")],
                test=[load_predictions(pred / "model_test.npz")], embeddings=[emb],
                whiten=bool(plan.get("whiten", True)), test_truth=truth)


def main(argv: list[str] | None = None) -> int:
    from trainer.infer.chain import ChainInputs, run_chain

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a finished main-job OUT directory")
    p.add_argument("--data", type=Path, help="the raw data set (default: OUT/raw)")
    p.add_argument("--name", default="chain_ablation")
    p.add_argument("--scratch", type=Path, help="where each variant's chain writes (default: RUN/ablation)")
    args = p.parse_args(argv)
    inputs = load_inputs(args.run, args.data)
    rows = []
    for name, switches in VARIANTS.items():
        out = (args.scratch or args.run / "ablation") / name.replace(" ", "_").replace("+", "plus")
        res = run_chain(ChainInputs(**inputs, **switches), out)
        sub = res.extra["submission"]
        test = res.reports["test"]["steps"][res.submitted]
        decisions = res.extra.get("rotation", {}).get("test", {}).get("decisions", {})
        truth_rot = {e: 3 for e in decisions}  # foreign generators put every test experiment at rotation 3
        own = res.extra.get("test_assignment", {}).get(f"{res.submitted.split(' + ')[0]} + plate assignment", {})
        used = own.get("rotations", {}) if switches["rotation"] == "own" else {
            e: d["rotation"] for e, d in decisions.items()}
        rows.append({"variant": name, "submitted": res.submitted, "validation": round(sub["validation_accuracy"], 4),
                     "expected": round(sub["expected_test_accuracy"], 4), "test": round(test["accuracy"], 4),
                     "test_per_experiment": json.dumps({k: round(v, 3) for k, v in test["per_experiment"].items()}),
                     "test_rotations": json.dumps({e: (r, r == truth_rot[e]) if r is not None else None
                                                   for e, r in used.items()})})
        print(f"{name:<18} {res.submitted:<48} validation {sub['validation_accuracy']:.3f}  expected "
              f"{sub['expected_test_accuracy']:.3f}  test {test['accuracy']:.3f}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{args.name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (RESULTS / f"{args.name}_env.json").write_text(json.dumps({**environment(), "run": str(args.run)}, indent=2))
    _plot(rows, RESULTS / f"{args.name}.png")
    print(f"-> {RESULTS / args.name}.csv, .png")
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    xs = np.arange(len(rows))
    for k, (key, label) in enumerate((("validation", "validation (best case)"), ("expected", "expected test"),
                                      ("test", "test"))):
        vals = [r[key] for r in rows]
        ax.bar(xs + (k - 1) * 0.27, vals, 0.27, label=label)
        for x, v in zip(xs + (k - 1) * 0.27, vals):
            ax.text(x, v + 0.01, f"{v:.2f}", ha="center", fontsize=7)
    ax.set_xticks(xs, [r["variant"] for r in rows])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("well accuracy of the submitted step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
