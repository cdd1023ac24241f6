"""Run the inference chain on per-view prediction files: every step on the out-of-fold and the test predictions,
the step validation ranks first written to submission.csv, the accuracy of every step in report.json.

    python -m trainer.infer.chain --store rxrx1.zarr --val-predictions oof_s0.npz oof_s1.npz \
        --test-predictions test_s0.npz test_s1.npz --sample-submission data/sample_submission.csv \
        [--test-truth data/test_truth.csv] --out out/inference
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from trainer.infer.aggregate import load_sites
from trainer.infer.chain.run import ChainInputs, run_chain
from trainer.infer.predict import concat_predictions, load_predictions
from trainer.infer.report import format_table


def main(argv: Sequence[str] | None = None) -> int:
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
