"""`cellio download DEST`: fetch RxRx1 from Kaggle (resumable), unzip into the Kaggle layout, verify."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "download RxRx1 from Kaggle (resumable), unzip it into the Kaggle layout and verify every site's files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dest", type=Path, help="data set root to create or complete (needs ~100 GB free)")
    parser.add_argument("--files", nargs="+", metavar="NAME", default=None,
                        help="only these competition files, e.g. --files train.csv test.csv")
    parser.add_argument("--force", action="store_true", help="download again even files already complete")
    parser.add_argument("--no-unzip", dest="unzip", action="store_false", help="keep the zips, do not extract")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip checking that every site in the CSVs has its six images")
    parser.add_argument("--skip-disk-check", dest="check_disk", action="store_false",
                        help="do not refuse to start when the free disk space looks too small")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from .. import download

    report = download(args.dest, files=args.files, force=args.force, check_disk=args.check_disk,
                      unzip=args.unzip, verify=args.verify, progress=args.progress)
    print(report.summary())
    return 0
