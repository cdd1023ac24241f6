"""`cellio export STORE OUT --ome-zarr [--plates ...] [--wells ...]`: a store (or a subset) as OME-Zarr HCS plates."""
from __future__ import annotations

import argparse

HELP = ("write a store (or some plates / wells of it) as OME-Zarr HCS plates, one OUT/{plate}.ome.zarr per plate, "
        "that napari and the other OME-NGFF tools open")
INTERRUPTED = "finished plates are kept; rerun the same command to write the rest (a half-written plate is redone)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="store path or fsspec URL")
    parser.add_argument("out", help="directory that receives the plates")
    fmt = parser.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--ome-zarr", dest="ome_zarr", action="store_true",
                     help="OME-Zarr HCS plates (OME-NGFF 0.4 by default: every current viewer reads it)")
    parser.add_argument("--plates", default=None,
                        help="comma-separated plates, named {experiment}_{plate} (e.g. HUVEC-07_1), or the plate "
                             "alone for a store without experiments (default: all)")
    parser.add_argument("--wells", default=None, help="comma-separated wells, e.g. B02,C03 (default: all)")
    parser.add_argument("--ngff-version", choices=("0.4", "0.5"), default="0.4",
                        help="OME-NGFF version: 0.4 (Zarr v2) or 0.5 (Zarr v3, for v3-capable readers)")
    parser.add_argument("--levels", type=int, default=1,
                        help="resolution levels per field (1 = full resolution; each further level halves Y and X)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace plates in OUT that were written from another store or selection")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..export import export_ome_zarr
    from ..ingestion.plan import as_tuple

    report = export_ome_zarr(args.store, args.out, plates=as_tuple(args.plates), wells=as_tuple(args.wells),
                             version=args.ngff_version, levels=args.levels, overwrite=args.overwrite,
                             progress=args.progress)
    for plate in report.plates:
        state = "kept (already exported)" if plate.resumed else "written"
        print(f"{plate.path}: {plate.wells} wells, {plate.sites} sites, {state}")
    print(f"{report.n_sites} sites in {len(report.plates)} OME-NGFF {report.version} plates under {report.out}")
    return 0
