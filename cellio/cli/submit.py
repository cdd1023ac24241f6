"""`cellio submit FILE -m MSG`: validate a submission CSV, then upload it to the competition.
`cellio submit FILE --check`: only validate it (offline, no credentials needed)."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("validate a submission CSV (header, every test id_code once, sirna 0..1107) and submit it to Kaggle; "
        "--check only validates (no credentials needed)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="submission CSV with columns id_code,sirna")
    parser.add_argument("-m", "--message", default=None,
                        help="submission description shown on Kaggle (required to submit)")
    parser.add_argument("--sample-submission", type=Path, default=None, metavar="PATH",
                        help="the competition's sample_submission.csv (or test.csv) to check id_codes against; "
                             "default: one found beside FILE; without either nothing is submitted")
    parser.add_argument("--check", action="store_true",
                        help="validate FILE exactly as a submission would, then stop: nothing is uploaded, no "
                             "credentials or message needed (exit 0 valid, 2 invalid)")


def run(args: argparse.Namespace) -> int:
    from .. import submit, validate_submission

    if args.check:
        report = validate_submission(args.file, args.sample_submission, require_test_ids=True)
        print(f"{report.summary()}\nvalid; not submitted (--check)")
        return 0
    answer = submit(args.file, args.message, sample_submission=args.sample_submission)
    print(f"submitted {args.file}: {answer}")
    return 0
