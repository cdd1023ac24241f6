"""`cellio verify STORE [--repair RAW]`: re-read every chunk, check checksums, pixel sums and every small array."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = ("check a store end to end (checksums, pixel sums vs stats, every array, sites ingest skipped); --repair RAW "
        "rewrites damage and stores the skipped sites whose files are readable now")
INTERRUPTED = "nothing was changed by the check; a repair interrupted now resumes when rerun"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="store path or fsspec URL")
    parser.add_argument("--repair", metavar="RAW", type=Path, default=None,
                        help="re-ingest the damaged and missing sites (and rewrite damaged arrays) from this RxRx1 "
                             "directory, then verify again")
    parser.add_argument("--threads", type=int, default=None, help="reader threads (default: min(8, cores))")
    parser.add_argument("--workers", type=int, default=None, help="--repair: ingest worker processes")
    parser.add_argument("--json", type=Path, default=None, help="also write the report(s) as JSON here")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..params import parse_count
    from ..ingestion import repair_store
    from ..store.verify import verify_store

    parse_count("workers", args.workers)  # --repair's: refused before the verification, not after it
    report = verify_store(args.store, threads=args.threads, progress=args.progress, record=args.repair is None)
    print(report.summary())
    out = {"verify": report.to_dict()}
    final = report
    if args.repair is not None and not report.complete:
        print(f"\nrepairing from {args.repair} ...")
        fixed = repair_store(args.repair, args.store, report=report, workers=args.workers, threads=args.threads,
                             progress=args.progress)
        print(f"re-ingested {len(fixed.repaired)} sites, rewrote {len(fixed.rewritten)} arrays in "
              f"{fixed.seconds:.1f} s; verified again:\n")
        print(fixed.after.summary())
        out["repair"] = fixed.to_dict()
        final = fixed.after
    elif args.repair is not None:
        from ..store.verify import write_last_verified

        write_last_verified(args.store, report)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
        print(f"report written to {args.json}")
    return 0 if final.complete else 1  # damaged, or missing sites ingest skipped: 1
