"""`cellio ingest RAW STORE [--from NAME]`: a raw data set (RxRx1's PNGs, or any registered data set's files) -> a
Zarr v3 store (parallel, resumable, verified)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "ingest a raw data set (RxRx1, ...) into a Zarr v3 store (parallel, resumable after any crash, verified)"
INTERRUPTED = "finished batches are kept: rerun the same command to resume"


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..datasets import list_datasets
    from ..ingestion import DEFAULT_CODEC, DEFAULT_LAYOUT, ON_ERROR
    from ..store.codecs import list_codecs
    from ..store.images import LAYOUTS
    from ..store.shards import DEFAULT_SITES_PER_SHARD, DEFAULT_TILE

    parser.add_argument("raw", help="the raw data set: a local directory (RxRx1: the unzipped set, train/, test/, "
                                    "*.csv), or an object-storage URL for data sets whose reader reads URLs")
    parser.add_argument("--from", dest="dataset", choices=list_datasets(), default=None,
                        help="the data set RAW holds (default: detected from RAW's files)")
    parser.add_argument("store", help="store path or fsspec URL to create or resume (e.g. rxrx1.zarr, "
                                      "s3://bucket/rxrx1.zarr; credentials and endpoint from AWS_* / "
                                      "GOOGLE_APPLICATION_CREDENTIALS)")
    parser.add_argument("--codec", choices=list_codecs(), default=DEFAULT_CODEC, help="chunk compression")
    parser.add_argument("--layout", choices=LAYOUTS, default=DEFAULT_LAYOUT,
                        help="sharded: a shard file per group of sites, a tile per inner chunk (crops decode only "
                             "their tiles; few objects); chunked: a file per site (format 1.1)")
    parser.add_argument("--sites-per-shard", type=int, default=DEFAULT_SITES_PER_SHARD,
                        help="sharded layout: sites per shard file")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help="sharded layout: tile size in pixels")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--on-error", choices=ON_ERROR, default="fail",
                        help="fail: stop at the first bad site; skip: record it in the store and go on")
    parser.add_argument("--datasets", type=_csv, default=None,
                        help="the splits to ingest, comma list (default: all of the data set's; RxRx1: train,test)")
    parser.add_argument("--channels", type=_csv, default=None,
                        help="keep only these channels, comma list of names in store order (e.g. DNA,RNA,Mito; "
                             "default: all)")
    parser.add_argument("--plates", type=_csv, default=None, help="only these plates, comma list")
    parser.add_argument("--metadata", default=None,
                        help="the data set's perturbation tables where they are not in RAW (jump: the consortium's "
                             "metadata directory; ome-zarr: a CSV with plate, well, perturbation columns)")
    parser.add_argument("--experiments", type=_csv, default=None, help="comma list, e.g. HUVEC-01,RPE-03")
    parser.add_argument("--cell-types", type=_csv, default=None, help="comma list, e.g. HUVEC,U2OS")
    parser.add_argument("--limit", type=int, default=None, help="only the first N sites after filtering")
    parser.add_argument("--scheduler", default=None,
                        help="Dask distributed scheduler address (tcp://HOST:PORT) to run the tasks on")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="do not check each site's mean/std against pixel_stats.csv")
    parser.add_argument("--batch-size", type=int, default=None, help="sites per task (and per journal record)")
    parser.add_argument("--report", type=Path, default=None, help="also write the ingest report as JSON here")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..ingestion import ingest

    report = ingest(args.raw, args.store, codec=args.codec, workers=args.workers, on_error=args.on_error,
                    experiments=args.experiments, cell_types=args.cell_types, datasets=args.datasets,
                    limit=args.limit, scheduler=args.scheduler, verify=args.verify, progress=args.progress,
                    batch_size=args.batch_size, layout=args.layout, sites_per_shard=args.sites_per_shard,
                    tile=args.tile, reader=args.dataset, channels=args.channels, plates=args.plates,
                    metadata=args.metadata)
    rate = report.n_written / report.seconds if report.seconds > 0 else 0.0
    print(f"{report.store}: {report.n_ok} sites stored, {report.n_failed} failed, {report.n_written} written "
          f"by this run in {report.seconds:.1f} s ({rate:.1f} sites/s, codec {report.codec}, "
          f"{report.workers} workers)")
    for f in report.failed:
        print(f"  failed: {f.id_code} site {f.site}: {f.reason}")
    if args.report is not None:
        args.report.write_text(json.dumps(report.to_dict(), indent=2))
        print(f"report written to {args.report}")
    return 0
