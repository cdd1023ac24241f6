"""`cellio synth OUT`: write a synthetic RxRx1 data set in the exact Kaggle layout."""
from __future__ import annotations

import argparse
import json
import re

HELP = "write a synthetic RxRx1 data set (Kaggle layout, learnable morphology) for tests and demos"


def _size(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '17x11' -> (17, 11) as (height, width)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH (e.g. 512 or 17x11), got {text!r}")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..datasets import get_layout

    cell_types = list(get_layout("rxrx1").cell_types)
    p.add_argument("out", metavar="OUT", help="output directory (created)")
    p.add_argument("--layout", default="custom", choices=["custom", "rxrx1"],
                   help="rxrx1: the real data set's experiments, plates, wells, controls and missing wells (125,472 "
                        "sites; fixes --classes, --*-experiments, --cell-types, --sites, --positive-controls, "
                        "--missing-wells) at any --size; custom: as those options say")
    p.add_argument("--experiments", nargs="+", metavar="EXP",
                   help="only these experiments of the layout (e.g. HUVEC-01 HUVEC-17): a reduced set")
    p.add_argument("--classes", type=int, default=40, help="treatment siRNAs (a multiple of 4: 4 plate groups)")
    p.add_argument("--train-experiments", type=int, default=2, metavar="K", help="train experiments per cell type")
    p.add_argument("--test-experiments", type=int, default=1, metavar="T", help="test experiments per cell type")
    p.add_argument("--cell-types", nargs="+", default=cell_types, choices=cell_types,
                   help="cell types to generate")
    p.add_argument("--sites", type=int, default=2, help="sites per well")
    p.add_argument("--size", type=_size, default=(512, 512), help="image size: SIZE or HEIGHTxWIDTH")
    p.add_argument("--positive-controls", type=int, default=4, help="positive control siRNAs per plate (<= 30)")
    p.add_argument("--missing-wells", type=float, default=None,
                   help="fraction of treatment wells dropped (default: the profile's, 0 or 0.05)")
    p.add_argument("--profile", default="default", choices=["default", "hard"],
                   help="hard: subtle, cell-type-specific phenotypes, stronger plate gain, spread of cell sizes")
    p.add_argument("--seed", type=int, default=0, help="random seed (the output is a pure function of the arguments)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--zip", action="store_true", help="also write train.zip/test.zip like Kaggle's")
    p.add_argument("--no-pixel-stats", action="store_true", help="do not write pixel_stats.csv")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-check", action="store_true", help="skip the pixel-stats / texture classifier check "
                                                           "(always skipped with --layout rxrx1)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from .. import synthesize  # the public API: the RxRx1 generator

    summary = synthesize(
        args.out, classes=args.classes, train_experiments_per_cell_type=args.train_experiments,
        test_experiments_per_cell_type=args.test_experiments, cell_types=args.cell_types, sites=args.sites,
        size=args.size, positive_controls=args.positive_controls, missing_wells=args.missing_wells,
        profile=args.profile, layout=args.layout, experiments=args.experiments,
        seed=args.seed, workers=args.workers, zip=args.zip, pixel_stats=not args.no_pixel_stats,
        progress=not args.no_progress, check=not args.no_check and args.layout == "custom",
    )
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
        return 0
    h, w = summary["size"]
    print(f"wrote {summary['sites']} sites ({summary['train_sites']} train, {summary['test_sites']} test; "
          f"{summary['images']} PNGs of {h}x{w}) to {summary['out_dir']}")
    print(f"wells: {summary['wells']} " + ", ".join(f"{k} {v}" for k, v in summary["well_types"].items()))
    print("rotations: " + ", ".join(f"{e}={r}" for e, r in summary["rotations"].items()))
    print(f"time: {summary['seconds']:.1f} s total, rendering {summary['render_seconds']:.1f} s "
          f"= {summary['sites_per_s']:.1f} sites/s with {summary['workers']} worker(s); "
          f"{summary['cpu_ms_per_site']:.1f} CPU ms per site (= {1000 / summary['cpu_ms_per_site']:.1f} sites/s "
          "per fully available core)")
    check = summary["classifier"]
    if check:
        print(f"classifier check (train experiments -> test experiments, {check['n_eval_sites']} test treatment "
              f"sites, LogisticRegression): pixel-stats mean/std accuracy {check['pixel_stats_accuracy']:.3f} vs "
              f"chance {check['chance']:.3f}; texture-statistics accuracy {check['texture_accuracy']:.3f}")
    else:
        print("classifier check: skipped (--no-check, no test experiment, or scikit-learn missing)")
    for z in summary["zips"]:
        print(f"archive: {z}")
    return 0
