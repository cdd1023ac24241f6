"""`cellio metadata RAW`: validate an RxRx1 directory's metadata and summarise it (sites, classes, plate groups)."""
from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "validate RxRx1 metadata (CSVs, optionally image files) and summarise sites, classes and plate groups"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("raw", metavar="RAW", help="RxRx1 root (train.csv, ..., train/, test/) or rxrx.ai root")
    p.add_argument("--check-files", action="store_true", help="also require every image file to exist")
    p.add_argument("--no-pixel-stats", action="store_true", help="ignore pixel_stats.csv")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def summarize(sites: Any) -> dict[str, Any]:
    """JSON-safe summary of a site table (and its plate groups when they can be derived)."""
    from ..errors import MetadataError
    from .. import derive_plate_groups

    wells = sites.drop_duplicates("id_code")
    labelled = wells[wells["sirna"].notna()]
    out: dict[str, Any] = {
        "raw_dir": sites.attrs.get("raw_dir"),
        "sites": len(sites),
        "wells": len(wells),
        "sites_per_dataset": {k: int(v) for k, v in sites["dataset"].value_counts().sort_index().items()},
        "sites_per_cell_type": {k: int(v) for k, v in sites["cell_type"].value_counts().sort_index().items()},
        "sites_per_experiment": {k: int(v) for k, v in sites["experiment"].value_counts().sort_index().items()},
        "wells_per_type": {k: int(v) for k, v in wells["well_type"].value_counts().sort_index().items()},
        "treatment_classes": int(labelled.loc[labelled["well_type"] == "treatment", "sirna"].nunique()),
        "control_classes": int(labelled.loc[labelled["well_type"] != "treatment", "sirna"].nunique()),
        "unlabelled_wells": int(wells["sirna"].isna().sum()),
        "pixel_stats": bool(sites["pixel_mean_w1"].notna().any()),
    }
    try:
        groups = derive_plate_groups(sites)
        out["plate_groups"] = {"sizes": [len(g) for g in groups.groups], "rotations": dict(groups.rotations)}
    except MetadataError as exc:
        out["plate_groups"] = {"error": str(exc)}
    return out


def run(args: argparse.Namespace) -> int:
    from .. import read_metadata

    sites = read_metadata(args.raw, check_files=args.check_files, pixel_stats=not args.no_pixel_stats)
    s = summarize(sites)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"{s['raw_dir']}: {s['sites']} sites in {s['wells']} wells"
          + (" (all image files present)" if args.check_files else ""))
    print("sites per dataset:   " + ", ".join(f"{k} {v}" for k, v in s["sites_per_dataset"].items()))
    print("sites per cell type: " + ", ".join(f"{k} {v}" for k, v in s["sites_per_cell_type"].items()))
    print("sites per experiment:")
    exps = list(s["sites_per_experiment"].items())
    for i in range(0, len(exps), 6):
        print("  " + "  ".join(f"{k:>9} {v:>6}" for k, v in exps[i:i + 6]))
    print("wells per type:      " + ", ".join(f"{k} {v}" for k, v in s["wells_per_type"].items()))
    print(f"classes: {s['treatment_classes']} treatment siRNAs, {s['control_classes']} control siRNAs; "
          f"{s['unlabelled_wells']} unlabelled (test) wells; pixel stats {'yes' if s['pixel_stats'] else 'no'}")
    pg = s["plate_groups"]
    if "error" in pg:
        print(f"plate groups: not derivable: {pg['error']}")
    else:
        print(f"plate groups: 4 groups of sizes {pg['sizes']}; rotations: "
              + ", ".join(f"{e}={r}" for e, r in pg["rotations"].items()))
    return 0
