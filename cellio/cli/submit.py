"""`cellio submit FILE -m MSG`: validate a submission CSV, then upload it to the competition."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "validate a submission CSV (header, every test id_code once, sirna 0..1107) and submit it to Kaggle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="submission CSV with columns id_code,sirna")
    parser.add_argument("-m", "--message", required=True, help="submission description shown on Kaggle")
    parser.add_argument("--sample-submission", type=Path, default=None, metavar="PATH",
                        help="the competition's sample_submission.csv (or test.csv) to check id_codes against; "
                             "default: one found beside FILE")


def run(args: argparse.Namespace) -> int:
    from ..kaggle import submit

    answer = submit(args.file, args.message, sample_submission=args.sample_submission)
    print(f"submitted {args.file}: {answer}")
    return 0
